{{/* The release's full name, at most 63 characters. */}}
{{- define "nerite.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nerite.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nerite.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "nerite.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "nerite.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nerite.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "nerite.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The rules nerite needs where it manages ScaledConsumers: the same for the ClusterRole
(all namespaces) and for each namespaced Role.
*/}}
{{- define "nerite.rules" -}}
- apiGroups: ["nerite.dev"]
  resources: ["scaledconsumers"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["nerite.dev"]
  resources: ["scaledconsumers/status"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- range .Values.rbac.scaleTargets }}
{{- $subresources := list }}
{{- range .resources }}
{{- $subresources = append $subresources (printf "%s/scale" .) }}
{{- end }}
- apiGroups: [{{ .apiGroup | quote }}]
  resources: {{ toJson $subresources }}
  verbs: ["get", "update", "patch"]
{{- end }}
{{- if .Values.rbac.prefetchApply }}
{{- range .Values.rbac.scaleTargets }}
- apiGroups: [{{ .apiGroup | quote }}]
  resources: {{ toJson .resources }}
  verbs: ["get", "patch"]
{{- end }}
{{- end }}
{{- if .Values.rbac.prefetchConfigMap }}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- end -}}
