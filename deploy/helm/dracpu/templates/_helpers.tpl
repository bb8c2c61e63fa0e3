{{/* Chart name, truncated to a DNS label. */}}
{{- define "dracpu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: fullnameOverride, else the release name when it contains the chart name
     (release `dracpu` gives `dracpu`, the drop-in layout), else release-chart. */}}
{{- define "dracpu.fullname" -}}
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

{{/* Selector: `app: <fullname>`, as in dra-driver-cpu's plain manifests (`app=dracpu`), so
     its e2e suite and runbooks find the pods and kubectl apply can replace its DaemonSet. */}}
{{- define "dracpu.selectorLabels" -}}
app: {{ include "dracpu.fullname" . }}
{{- end }}

{{- define "dracpu.labels" -}}
{{ include "dracpu.selectorLabels" . }}
k8s-app: {{ include "dracpu.fullname" . }}
tier: node
app.kubernetes.io/name: {{ include "dracpu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* An absolute, cleaned host path from a value; fails naming the value otherwise. */}}
{{- define "dracpu.absPath" -}}
{{- $name := index . 0 }}{{- $path := index . 1 | default "" | toString }}
{{- if not (isAbs $path) }}
{{- fail (printf "%s must be an absolute path, got %q" $name $path) }}
{{- end }}
{{- clean $path }}
{{- end }}

{{- define "dracpu.kubeletRootDir" -}}
{{- include "dracpu.absPath" (list "kubeletRootDir" .Values.kubeletRootDir) }}
{{- end }}

{{/* Effective driver config: driverConfig with the deprecated args.* fields folded in
     (args.* wins, as in dra-driver-cpu), apiVersion v1alpha1 when absent. */}}
{{- define "dracpu.driverConfig" -}}
{{- $cfg := deepCopy (.Values.driverConfig | default dict) }}
{{- if not (hasKey $cfg "apiVersion") }}{{- $_ := set $cfg "apiVersion" "v1alpha1" }}{{- end }}
{{- range $key := list "cpuDeviceMode" "groupBy" "reservedCPUs" "hostnameOverride" }}
{{- with index $.Values.args $key }}{{- $_ := set $cfg $key . }}{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The driver's ServiceAccount as it appears in request.userInfo.username. */}}
{{- define "dracpu.serviceAccountUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "dracpu.fullname" . }}
{{- end }}
