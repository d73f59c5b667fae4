{{/*
Chart name, or nameOverride.
*/}}
{{- define "cao.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name of the release's objects: fullnameOverride, else <release>-<name>, shortened to the
release name when that already contains the chart name. Kept to 63 characters (label values).
*/}}
{{- define "cao.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "cao.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Labels that select the operator's pods. Never change them: a Deployment's selector is immutable.
*/}}
{{- define "cao.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cao.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The labels of an object of the release: `selector` (its selector labels, as text) and `component`,
with the chart's and the release's around them and commonLabels last. Called with
(dict "root" $ "selector" ... "component" ...).
*/}}
{{- define "cao.labelsOf" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ .selector }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: cross-account-operator
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels on every object of the release (but the test pod).
*/}}
{{- define "cao.labels" -}}
{{- include "cao.labelsOf" (dict "root" . "selector" (include "cao.selectorLabels" .) "component" "operator") -}}
{{- end -}}

{{/*
Labels that select the `helm test` pod (the NetworkPolicy admits it by them). Its name differs
from the operator's: with the operator's selector labels the metrics Service would send the test's
own request to the test pod, and the operator's NetworkPolicy, PodDisruptionBudget and
anti-affinity would count it as an operator pod.
*/}}
{{- define "cao.testSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-test" (include "cao.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels of the `helm test` pod.
*/}}
{{- define "cao.testLabels" -}}
{{- include "cao.labelsOf" (dict "root" . "selector" (include "cao.testSelectorLabels" .) "component" "test") -}}
{{- end -}}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "cao.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cao.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Name of the leader-election Lease.
*/}}
{{- define "cao.leaseName" -}}
{{- default (include "cao.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/*
An image reference from values `image` (repository, tag, digest): repository:tag, or
repository@digest when a digest is given; `defaultTag` stands in for an empty tag. Called with
(dict "image" ... "defaultTag" ... "what" <the values key, for the error>).
*/}}
{{- define "cao.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (required (printf "%s.tag or %s.digest is required" .what .what) (default .defaultTag .image.tag)) -}}
{{- end -}}
{{- end -}}

{{/*
The operator image: repository:tag (the chart's appVersion when the tag is empty), or
repository@digest when a digest is given.
*/}}
{{- define "cao.image" -}}
{{- include "cao.imageRef" (dict "image" .Values.image "defaultTag" .Chart.AppVersion "what" "image") -}}
{{- end -}}

{{/*
RBAC rules for the CrossAccountRoles of a namespace: in the ClusterRole (cluster mode) or in a Role
in each watched namespace (namespaced mode).
*/}}
{{- define "cao.namespacedRules" -}}
# CrossAccountRoles: watched; the finalizer is added and removed by patch; status written by
# server-side apply.
- apiGroups: ["crossaccount.io"]
  resources: ["crossaccountroles"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["crossaccount.io"]
  resources: ["crossaccountroles/status"]
  verbs: ["patch"]
# Credentials Secrets: created only if absent, replaced with the resourceVersion that was read
# (update), watched through a label selector (RBAC cannot express one, hence list/watch on all
# Secrets), read before a write, deleted (with preconditions) with their CrossAccountRole.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
# Events on CrossAccountRoles (a repeated event is patched into a series).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.rolloutRestarts }}
# spec.credentials.rolloutRestartTargets: read (by name, or listed by label selector) to see
# whether they run with the current credentials; the pod template is stamped to restart them.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "patch"]
{{- end }}
{{- end -}}

{{/*
Name of the metrics Service: a Service name is a DNS label of at most 63 characters, so the full
name is cut to leave room for the suffix.
*/}}
{{- define "cao.metricsServiceName" -}}
{{- printf "%s-metrics" (include "cao.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}
