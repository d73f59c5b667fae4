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
Labels on every object of the release.
*/}}
{{- define "cao.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cao.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: cross-account-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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
The operator image: repository:tag, or repository@digest when a digest is given.
*/}}
{{- define "cao.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
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
