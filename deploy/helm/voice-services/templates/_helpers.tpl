{{/* Names, labels and the per-service checks shared by every template. */}}

{{- define "voice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "voice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "voice.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "voice.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The services this release runs, in order: "asr", "tts" (those enabled). */}}
{{- define "voice.services" -}}
{{- $out := list -}}
{{- range $name := list "asr" "tts" -}}
{{- if (index $.Values $name).enabled -}}{{- $out = append $out $name -}}{{- end -}}
{{- end -}}
{{- join " " $out -}}
{{- end -}}

{{/* Arguments: dict "root" $ "svc" "asr" */}}
{{- define "voice.component" -}}
{{- printf "%s-%s" (include "voice.fullname" .root) .svc | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "voice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{- define "voice.labels" -}}
{{ include "voice.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The grace period must cover the preStop pause, the drain and uvicorn's last 5 s. */}}
{{- define "voice.checkGrace" -}}
{{- $v := index .root.Values .svc -}}
{{- $needed := add $v.preStopSleepS $v.drainTimeoutS 5 -}}
{{- if le (int $v.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must exceed preStopSleepS + drainTimeoutS + 5 = %v, or Kubernetes kills draining pods" .svc $v.terminationGracePeriodSeconds $needed) -}}
{{- end -}}
{{- end -}}

{{- define "voice.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- .Values.apiKeys.existingSecret -}}
{{- else if .Values.apiKeys.keys -}}
{{- printf "%s-api-keys" (include "voice.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "voice.voicesClaim" -}}
{{- if .Values.tts.voices.persistence.existingClaim -}}
{{- .Values.tts.voices.persistence.existingClaim -}}
{{- else -}}
{{- printf "%s-voices" (include "voice.fullname" .) -}}
{{- end -}}
{{- end -}}
