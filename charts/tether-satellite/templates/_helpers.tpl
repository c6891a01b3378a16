{{- define "satellite.fullname" -}}
{{- printf "%s-tether-satellite" .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- end -}}

{{- define "satellite.labels" -}}
app.kubernetes.io/name: tether-satellite
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "satellite.selector" -}}
app.kubernetes.io/name: tether-satellite
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "satellite.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* What the controller and node plugins both pass. */}}
{{- define "satellite.commonArgs" -}}
- --cluster={{ .Values.cluster }}
- --name={{ .Values.satellite }}
- --registry={{ .Values.central.registry }}
- --gateway={{ join "," .Values.central.gateways }}
- --state-dir=/var/lib/tether-satellite
- --trust-ca=/etc/tether/central-ca/ca.crt
- --csi-socket=/csi/csi.sock
- --log-format={{ .Values.logFormat }}
{{- end -}}
