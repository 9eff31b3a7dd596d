{{/* Names and labels shared by every template. */}}
{{- define "vdisk.name" -}}vdisk{{- end -}}

{{- define "vdisk.fullname" -}}
{{- if contains "vdisk" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-vdisk" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "vdisk.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (printf "%s-controller" (include "vdisk.fullname" .)) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "vdisk.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{- define "vdisk.labels" -}}
app.kubernetes.io/name: {{ include "vdisk.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "vdisk.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vdisk.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}
