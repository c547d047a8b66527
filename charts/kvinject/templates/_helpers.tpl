{{/*
Base name of every object: the release name when it already contains the chart
name (release "kvinject" gives the same names as the kustomize install),
otherwise "<release>-kvinject".
*/}}
{{- define "kvinject.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of the webhook's Deployment, Service and ServiceAccount. */}}
{{- define "kvinject.webhookName" -}}
{{- printf "%s-webhook" (include "kvinject.fullname" .) -}}
{{- end -}}

{{/* Name of the MutatingWebhookConfiguration. */}}
{{- define "kvinject.webhookConfigName" -}}
{{- include "kvinject.fullname" . -}}
{{- end -}}

{{/* Secret of the serving certificate (builtin: the webhook's; cert-manager: the Certificate's). */}}
{{- define "kvinject.certSecretName" -}}
{{- if eq .Values.certificates.mode "builtin" -}}
{{- printf "%s-webhook-cert" (include "kvinject.fullname" .) -}}
{{- else -}}
{{- printf "%s-webhook-tls" (include "kvinject.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The name the API server verifies: <service>.<namespace>.svc. */}}
{{- define "kvinject.serviceDNSName" -}}
{{- printf "%s.%s.svc" (include "kvinject.webhookName" .) .Release.Namespace -}}
{{- end -}}

{{- define "kvinject.selectorLabels" -}}
app.kubernetes.io/name: kvinject
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "kvinject.labels" -}}
{{ include "kvinject.selectorLabels" . }}
app.kubernetes.io/part-of: kvinject
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}. */}}
{{- define "kvinject.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Refuse inconsistent values with a message that says what to change. */}}
{{- define "kvinject.validate" -}}
{{- if and (eq .Values.defaults.identity "managed") (not .Values.defaults.managedIdentityClientID) -}}
{{- fail "defaults.identity=managed needs defaults.managedIdentityClientID (or write managed:<client-id>)" -}}
{{- end -}}
{{- if and .Values.hub.enabled (ne .Values.hub.identity.kind "system") (not .Values.hub.identity.clientID) -}}
{{- fail (printf "hub.identity.kind=%s needs hub.identity.clientID: the client ID of the hub's Azure identity, which may only list secrets (see docs/hub.md), or use hub.identity.kind=system" .Values.hub.identity.kind) -}}
{{- end -}}
{{- if and .Values.restarter.enabled (not .Values.hub.enabled) -}}
{{- fail "restarter.enabled=true needs hub.enabled=true: the restart controller reads the hub's reports of swapped secrets (see docs/actions.md); enable the hub, or leave restarter.enabled=false" -}}
{{- end -}}
{{- end -}}

{{/* Name of the version hub's Deployment, Service, ServiceAccount and RBAC. */}}
{{- define "kvinject.hubName" -}}
{{- printf "%s-hub" (include "kvinject.fullname" .) -}}
{{- end -}}

{{/* The hub's https URL, the webhook's --hub-url: its Service in the release namespace. */}}
{{- define "kvinject.hubURL" -}}
{{- printf "https://%s.%s.svc" (include "kvinject.hubName" .) .Release.Namespace -}}
{{- end -}}

{{/* Secret of the hub's serving certificate: in builtin mode the webhook's, in cert-manager mode its own. */}}
{{- define "kvinject.hubCertSecretName" -}}
{{- if eq .Values.certificates.mode "builtin" -}}
{{- include "kvinject.certSecretName" . -}}
{{- else -}}
{{- printf "%s-hub-tls" (include "kvinject.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "kvinject.hubSelectorLabels" -}}
app.kubernetes.io/name: kvinject
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: hub
{{- end -}}

{{- define "kvinject.hubLabels" -}}
{{ include "kvinject.hubSelectorLabels" . }}
app.kubernetes.io/part-of: kvinject
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Name of the restart controller's Deployment, ServiceAccount, ClusterRole and ValidatingAdmissionPolicy. */}}
{{- define "kvinject.restarterName" -}}
{{- printf "%s-restarter" (include "kvinject.fullname" .) -}}
{{- end -}}

{{/* The restart controller's ServiceAccount as <namespace>/<name> (the hub's --restarter-service-account). */}}
{{- define "kvinject.restarterServiceAccount" -}}
{{- printf "%s/%s" .Release.Namespace (include "kvinject.restarterName" .) -}}
{{- end -}}

{{/* Name of the headless Service that resolves to every hub replica (the restarter's --hub-peers). */}}
{{- define "kvinject.hubPeersName" -}}
{{- printf "%s-peers" (include "kvinject.hubName" .) -}}
{{- end -}}

{{- define "kvinject.restarterSelectorLabels" -}}
app.kubernetes.io/name: kvinject
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: restarter
{{- end -}}

{{- define "kvinject.restarterLabels" -}}
{{ include "kvinject.restarterSelectorLabels" . }}
app.kubernetes.io/part-of: kvinject
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
