// A long-running service on the AWS SDK for JavaScript v3, as a consumer of the operator's
// Secret: one STS client for the life of the process, with the SDK's default credential chain
// (AWS_CONFIG_FILE with the Secret's credential_process, or AWS_CONTAINER_CREDENTIALS_FULL_URI of
// the credentials-endpoint sidecar), calling sts:GetCallerIdentity every CONSUMER_INTERVAL_MS
// and leaving the refresh of its credentials entirely to the SDK. It stops by itself after
// CONSUMER_DURATION_S.
//
// One line per call on stdout: `<unix ms> ok` or `<unix ms> error <code>`; nothing secret.
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";

const positive = (name, fallback) => {
  const value = Number.parseInt(process.env[name] ?? "", 10);
  return Number.isFinite(value) && value > 0 ? value : fallback;
};
const interval = positive("CONSUMER_INTERVAL_MS", 3000);
const deadline = Date.now() + positive("CONSUMER_DURATION_S", 1500) * 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const client = new STSClient({});
console.error("js-v3 consumer started");
while (Date.now() < deadline) {
  try {
    await client.send(new GetCallerIdentityCommand({}), { abortSignal: AbortSignal.timeout(20000) });
    console.log(`${Date.now()} ok`);
  } catch (error) {
    console.log(`${Date.now()} error ${error?.name ?? "Unknown"}`);
    console.error(`${Date.now()} ${error?.message ?? error}`);
  }
  await sleep(interval);
}
