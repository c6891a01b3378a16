{{- define "tether.fullname" -}}
{{- if contains "tether" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tether" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tether.labels" -}}
app.kubernetes.io/name: tether
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tether.selector" -}}
app.kubernetes.io/name: tether
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tether.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The registry's admin API, as every pod reaches it. */}}
{{- define "tether.registryURL" -}}
https://{{ include "tether.fullname" . }}-registry.{{ .Release.Namespace }}.svc:{{ .Values.registry.port }}
{{- end -}}

{{/* etcd's client URLs, comma-separated. */}}
{{- define "tether.etcdEndpoints" -}}
{{- if .Values.etcd.bundled -}}
https://{{ include "tether.fullname" . }}-etcd-client.{{ .Release.Namespace }}.svc:2379
{{- else -}}
{{- required "etcd.endpoints: the https:// URLs of the etcd to use (or etcd.bundled: true)" .Values.etcd.endpoints | join "," -}}
{{- end -}}
{{- end -}}

{{/* Only ca.crt of the CA Secret: the key stays with the registry. */}}
{{- define "tether.caTrustVolume" -}}
- name: ca-trust
  secret:
    secretName: {{ .Values.ca.secretName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end -}}
