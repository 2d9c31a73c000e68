{{- define "lao.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lao.fullname" -}}
{{- if .Values.fullnameOverride -}}{{ .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else -}}{{- $name := include "lao.name" . -}}
{{- if contains $name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator image: pinned by digest when image.digest is set (the tag is then ignored). */}}
{{- define "lao.image" -}}
{{- if .Values.image.digest -}}{{ .Values.image.repository }}@{{ .Values.image.digest }}{{- else -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- end -}}

{{- define "lao.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "lao.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lora-ablation
{{- end -}}

{{- define "lao.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lao.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lao.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "lao.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* Namespaced rules: what the operator does to ablations, their Jobs, pods and Events. No Secrets. */}}
{{- define "lao.namespacedRules" -}}
# Kopf patches (finalizers, its annotations, status); it never replaces a whole object, so no `update`.
- apiGroups: ["lora.ablation.dev"]
  resources: ["loraablations"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["lora.ablation.dev"]
  resources: ["loraablations/status"]
  verbs: ["get", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# Read-only: why a trial's pod cannot start (image pull, missing Secret, unschedulable) -> TrialStuck.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- if .Values.multiNode.enabled }}
# Multi-node trials: the one engine kind they run as, with the verbs used on Jobs (watch, create, stop, suspend).
{{- if eq .Values.multiNode.engine "TrainJob" }}
- apiGroups: ["trainer.kubeflow.org"]
  resources: ["trainjobs"]
{{- else }}
- apiGroups: ["jobset.x-k8s.io"]
  resources: ["jobsets"]
{{- end }}
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
{{- end }}
{{- end -}}
