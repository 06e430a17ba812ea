{{/* Names and labels shared by every template. */}}

{{- define "powgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release + chart, unless the release name already contains the chart name. */}}
{{- define "powgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects are shared by all releases: their names carry the namespace too. */}}
{{- define "powgate.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "powgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "powgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "powgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "powgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "powgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: powgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "powgate.operatorSelectorLabels" -}}
{{ include "powgate.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "powgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "powgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: the digest wins over the tag; the tag defaults to appVersion. */}}
{{- define "powgate.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "powgate.peeringName" -}}
{{- default (include "powgate.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "powgate.clusterwide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{- define "powgate.webhookService" -}}
{{- printf "%s-webhook" (include "powgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the webhook's serving certificate (from cert-manager or the operator). */}}
{{- define "powgate.webhookCertSecret" -}}
{{- printf "%s-webhook-tls" (include "powgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "powgate.webhookConfigurationName" -}}
{{- include "powgate.clusterName" . }}
{{- end }}

{{/* Checks that no combination of values can render a broken installation. */}}
{{- define "powgate.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.peering.enabled) }}
{{- fail "operator.replicas > 1 needs peering.enabled=true: without peering every replica would reconcile every policy" }}
{{- end }}
{{- if and .Values.webhook.clientAuth.names (not .Values.webhook.clientAuth.caBundle) }}
{{- fail "webhook.clientAuth.names needs webhook.clientAuth.caBundle: names are checked on certificates of that CA" }}
{{- end }}
{{- if and .Values.certManager.enabled (not .Values.webhook.enabled) }}
{{- fail "certManager.enabled issues the webhook's certificate: it needs webhook.enabled=true" }}
{{- end }}
{{- with .Values.sidecar }}
{{- if and .derivationsPending (lt (int .derivationsPending) (int (.derivationThreads | default 1))) }}
{{- fail "sidecar.derivationsPending counts the derivations running too: it must be at least sidecar.derivationThreads" }}
{{- end }}
{{- end }}
{{- end }}

{{/* What the operator needs where policies live (a Role per namespace, or cluster-wide). */}}
{{- define "powgate.policyRules" -}}
- apiGroups: [powgate.dev]
  resources: [powpolicies]
  # patch: kopf's finalizer and progress annotations.
  verbs: [get, list, watch, patch]
- apiGroups: [powgate.dev]
  resources: [powpolicies/status]
  verbs: [get, patch]
# ConfigMaps: each policy's rendered config and reputation export (created, then
# replaced or patched by name) and the reputation imports a policy names (get; they
# must carry powgate.dev/reputation-source). list/watch: sidecars watch their config
# through the policy's Role, and the API server lets the operator grant only what
# it holds itself (RBAC escalation check). No delete: owner references collect them.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update, patch]
# Secrets: each policy's key ring (created, then patched by name), and
# get for the opt-in Secrets a policy names (Prometheus credentials, trusted API
# keys, reputation imports; each must carry its powgate.dev label). Names are the
# policies' own, unknown here, so this cannot be narrowed to resourceNames; but
# without list/watch nothing enumerates Secrets, and without delete none goes.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# Pods, read only: which carry a policy's sidecar (their service accounts are
# bound to its config; nothing is granted at admission), which run without one.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Each policy's NetworkPolicy (ingress through the sidecar only): list to see
# whether the namespace has NetworkPolicies of its own (networkPolicy.mode Auto),
# delete when a policy turns it Off.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, create, update, delete]
{{- if .Values.webhook.enabled }}
# Per policy, a Role that lets the injected sidecars read their config, bound
# to the service accounts of the injected pods (read, created, replaced by name).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, update]
{{- end }}
{{- if and .Values.peering.enabled (not (include "powgate.clusterwide" .)) }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}

{{- define "powgate.webhookClientCA" -}}
{{- printf "%s-webhook-client-ca" (include "powgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
