//! Prints the CustomResourceDefinitions as YAML, or with `--out DIR` writes one file per CRD and
//! the admission policy of the guardrails (`make crds` regenerates `crds/` this way).

use std::path::PathBuf;

use cross_account_operator::{admission, crds};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => print!("{}", crds::render_all()?),
        (Some("--out"), Some(dir)) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            for (file, crd) in crds::all() {
                std::fs::write(dir.join(file), crds::render(&crd)?)?;
            }
            std::fs::write(dir.join(admission::FILE), admission::render()?)?;
        }
        _ => anyhow::bail!("usage: crdgen [--out DIR]"),
    }
    Ok(())
}
