{{/*
Names. Every object name is derived from the release here, so templates never build names
themselves.
*/}}

{{- define "portcullis-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name: the release name when it already contains the chart name (e.g. a
release called "portcullis-agent"), else "<release>-<chart>". Cut to 52 characters: the
StatefulSet controller adds a 10-character hash to it in the controller-revision-hash label,
whose value may not exceed 63 characters.
*/}}
{{- define "portcullis-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels. The selector labels include the component, so the uninstall hook's pod (component
"uninstall") is never selected by the webhook Service, the PodDisruptionBudget or the
StatefulSet.
*/}}
{{- define "portcullis-agent.baseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis-agent.selectorLabels" -}}
{{ include "portcullis-agent.baseSelectorLabels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "portcullis-agent.commonLabels" -}}
helm.sh/chart: {{ include "portcullis-agent.chart" . }}
{{ include "portcullis-agent.baseSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end -}}

{{- define "portcullis-agent.labels" -}}
{{ include "portcullis-agent.commonLabels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "portcullis-agent.serviceAccountName" -}}
{{- default (include "portcullis-agent.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The Service the API server calls; also the StatefulSet's governing Service. */}}
{{- define "portcullis-agent.serviceName" -}}
{{- include "portcullis-agent.fullname" . -}}
{{- end -}}

{{/* The ValidatingWebhookConfiguration the agent programs (cluster-scoped). */}}
{{- define "portcullis-agent.webhookConfigName" -}}
{{- default (include "portcullis-agent.fullname" .) .Values.webhook.configName -}}
{{- end -}}

{{/* The Secret where the agent keeps its webhook serving certificate. */}}
{{- define "portcullis-agent.certSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "portcullis-agent.fullname" .)) .Values.webhook.certSecretName -}}
{{- end -}}

{{/* The Lease that elects the writing replica. */}}
{{- define "portcullis-agent.leaseName" -}}
{{- default (printf "%s-leader" (include "portcullis-agent.fullname" .)) .Values.webhook.leaseName -}}
{{- end -}}

{{/* The ConfigMap holding controlPlane.ca when it is given inline. */}}
{{- define "portcullis-agent.caConfigMapName" -}}
{{- printf "%s-ca" (include "portcullis-agent.fullname" .) -}}
{{- end -}}

{{/* Required values, checked with clear messages. */}}
{{- define "portcullis-agent.clusterName" -}}
{{- required "clusterName is required: the cluster's name as registered with `portcullis cluster register NAME` (e.g. --set clusterName=prod-eu-1)" .Values.clusterName -}}
{{- end -}}

{{- define "portcullis-agent.controlPlaneAddress" -}}
{{- required "controlPlane.address is required: the control plane's gRPC URL (e.g. --set controlPlane.address=https://portcullis-control-plane.portcullis-system.svc:8443)" .Values.controlPlane.address -}}
{{- end -}}

{{/*
Whether a control-plane CA is configured: "inline", "configmap", "secret" or "" (system roots).
Fails when more than one source is given.
*/}}
{{- define "portcullis-agent.caSource" -}}
{{- $cp := .Values.controlPlane -}}
{{- $sources := list -}}
{{- if $cp.ca }}{{ $sources = append $sources "inline" }}{{ end -}}
{{- if $cp.caConfigMap.name }}{{ $sources = append $sources "configmap" }}{{ end -}}
{{- if $cp.caSecret.name }}{{ $sources = append $sources "secret" }}{{ end -}}
{{- if gt (len $sources) 1 -}}
{{- fail "give at most one of controlPlane.ca, controlPlane.caConfigMap.name and controlPlane.caSecret.name" -}}
{{- end -}}
{{- first $sources | default "" -}}
{{- end -}}

{{/*
The exempt namespaces, comma-separated: exemptNamespaces plus the release namespace, each
checked to be a namespace name (the agent refuses patterns such as "*" at start; failing here
stops the install before anything is changed).
*/}}
{{- define "portcullis-agent.exemptNamespaces" -}}
{{- $names := list -}}
{{- range .Values.exemptNamespaces -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" (toString .)) -}}
{{- fail (printf "exemptNamespaces: %q is not a namespace name (exact names only; a pattern such as \"*\" would exempt everything)" (toString .)) -}}
{{- end -}}
{{- $names = append $names (toString .) -}}
{{- end -}}
{{- $names = append $names .Release.Namespace -}}
{{- $names | uniq | join "," -}}
{{- end -}}

{{- define "portcullis-agent.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}
