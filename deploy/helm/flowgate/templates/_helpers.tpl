{{- define "flowgate.name" -}}
{{- printf "%s-%s" .Release.Name (lower .domain) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flowgate.config" -}}
{{- printf "%s-config" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
