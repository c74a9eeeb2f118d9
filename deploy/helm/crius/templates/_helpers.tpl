{{/* The name of every object: the release name, or release-chart when the release name lacks the chart's. */}}
{{- define "crius.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "crius.baseLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The installer DaemonSet's pods (the uninstall hook's pod has component: uninstall). */}}
{{- define "crius.selectorLabels" -}}
{{ include "crius.baseLabels" . }}
app.kubernetes.io/component: installer
{{- end -}}

{{- define "crius.labels" -}}
{{ include "crius.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "crius.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* crius.toml: .Values.config, plus [runtime.handlers.<kvm handler>] when kvm is on. */}}
{{- define "crius.config" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- if .Values.kvm.enabled -}}
{{- $runtime := get $config "runtime" | default dict -}}
{{- $handlers := get $runtime "handlers" | default dict -}}
{{- $_ := set $handlers .Values.kvm.handler (merge (dict "type" "kvm") (deepCopy .Values.kvm.config)) -}}
{{- $_ := set $runtime "handlers" $handlers -}}
{{- $_ := set $config "runtime" $runtime -}}
{{- end -}}
{{- include "crius.tomlTable" (dict "path" "" "table" $config) -}}
{{- end -}}

{{/*
One TOML table: its plain keys first, then each sub-table as [path.key].
Not Helm's toToml: values files reach templates with every number as a
float, which toToml writes as 30.0 and crius refuses where it wants an
integer; toJson writes 30. Strings, booleans, numbers and arrays of them
are written as JSON, which is valid TOML for them.
*/}}
{{- define "crius.tomlTable" -}}
{{- $path := .path -}}
{{- range $key := keys .table | sortAlpha -}}
{{- $value := get $.table $key -}}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end -}}
{{- end -}}
{{- range $key := keys .table | sortAlpha -}}
{{- $value := get $.table $key -}}
{{- if kindIs "map" $value -}}
{{- $sub := ternary $key (printf "%s.%s" $path $key) (eq $path "") }}

[{{ $sub }}]
{{- include "crius.tomlTable" (dict "path" $sub "table" $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
