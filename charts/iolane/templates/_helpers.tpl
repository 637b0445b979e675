{{/*
Helpers of the iolane chart: labels, image references and the node config's TOML.
*/}}

{{/* Labels every object carries (kustomize's `app.kubernetes.io/part-of: iolane` plus
Helm's own). */}}
{{- define "iolane.labels" -}}
app.kubernetes.io/part-of: iolane
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* `repository:tag@digest` (no `@digest` when the digest is empty). */}}
{{- define "iolane.image" -}}
{{- .repository }}:{{ .tag }}{{ with .digest }}@{{ . }}{{ end -}}
{{- end -}}

{{/* One TOML value. Helm reads every number as a float, so the key decides: ratios and
watermarks are floats (written with a decimal point), every other number an integer;
strings are quoted (JSON strings are TOML basic strings), lists are arrays. */}}
{{- define "iolane.tomlValue" -}}
{{- $k := .k -}}{{- $v := .v -}}
{{- if kindIs "string" $v -}}
{{ toJson $v }}
{{- else if kindIs "bool" $v -}}
{{ $v }}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "iolane.tomlValue" (dict "k" $k "v" $e) }}{{ end }}]
{{- else if has $k (list "overprovision_ratio" "data_high_watermark" "metadata_high_watermark") -}}
{{- $f := float64 $v -}}
{{- if eq $f (floor $f) }}{{ printf "%.1f" $f }}{{ else }}{{ $f }}{{ end -}}
{{- else if kindIs "map" $v -}}
{ {{- range $i, $key := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ $key }} = {{ include "iolane.tomlValue" (dict "k" $key "v" (get $v $key)) }}{{ end }} }
{{- else -}}
{{ int64 $v }}
{{- end -}}
{{- end -}}

{{/* The node config file, from .Values.nodeConfig. */}}
{{- define "iolane.nodeConfig" -}}
# iolane node config, rendered by the Helm chart from .Values.nodeConfig.
{{- with .Values.nodeConfig.loop }}

[loop]
{{- range $k, $v := . }}
{{ $k }} = {{ include "iolane.tomlValue" (dict "k" $k "v" $v) }}
{{- end }}
{{- end }}
{{- range .Values.nodeConfig.deviceClasses }}

[[device_class]]
{{- range $k, $v := . }}
{{ $k }} = {{ include "iolane.tomlValue" (dict "k" $k "v" $v) }}
{{- end }}
{{- end }}
{{- range $name, $tier := .Values.nodeConfig.tiers }}

[tiers.{{ toJson $name }}]
{{- range $k, $v := $tier }}
{{ $k }} = {{ include "iolane.tomlValue" (dict "k" $k "v" $v) }}
{{- end }}
{{- end }}
{{ end -}}
