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
{{- end -}}
