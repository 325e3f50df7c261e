{{/*
Names and labels.
*/}}
{{- define "keyless.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyless.fullname" -}}
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

{{- define "keyless.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyless.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keyless.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "keyless.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "keyless.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyless.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "keyless.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Workload identity, for a chart that runs keyless as a sidecar and so owns the pod and its
ServiceAccount. Call with the keyless scope: .Subcharts.keyless.

  metadata.labels of the pod template:
    {{- include "keyless.workloadIdentity.podLabels" .Subcharts.keyless | nindent 8 }}
  metadata.annotations of the ServiceAccount:
    {{- include "keyless.workloadIdentity.serviceAccountAnnotations" .Subcharts.keyless | nindent 4 }}

Both render nothing when workloadIdentity.enabled is false.
*/}}
{{- define "keyless.workloadIdentity.podLabels" -}}
{{- if .Values.workloadIdentity.enabled -}}
azure.workload.identity/use: "true"
{{- end }}
{{- end }}

{{- define "keyless.workloadIdentity.serviceAccountAnnotations" -}}
{{- if .Values.workloadIdentity.enabled -}}
azure.workload.identity/client-id: {{ required "workloadIdentity.clientId is required when workloadIdentity.enabled is true (the client id of the managed identity or app registration that holds the federated credential)" .Values.workloadIdentity.clientId | quote }}
{{- with .Values.workloadIdentity.tenantId }}
azure.workload.identity/tenant-id: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
keyless's settings with the chart's defaults applied, as YAML: `config` without empty
values, and credential = workload-identity when workload identity is on and no credential
was chosen.
*/}}
{{- define "keyless.effectiveConfig" -}}
{{- $out := dict }}
{{- $endpoint := required "config.endpoint is required: the Azure OpenAI resource, e.g. https://my-resource.openai.azure.com" .Values.config.endpoint }}
{{- range $key, $value := .Values.config }}
{{- if not (include "keyless.toml.isEmpty" $value) }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- if and .Values.workloadIdentity.enabled (not (hasKey $out "credential")) }}
{{- $_ := set $out "credential" "workload-identity" }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
TOML, written from values. keyless reads only TOML, and Helm has no toToml, so these
templates write it: a table's scalars and arrays first, then its sub-tables as [a.b]
sections, as TOML wants. Empty strings, nulls and empty lists or tables are left out, so
that keyless's own defaults apply. JSON strings are valid TOML basic strings.
*/}}
{{- define "keyless.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "keyless.toml.isEmpty" -}}
{{- if kindIs "invalid" . }}true
{{- else if and (kindIs "string" .) (eq . "") }}true
{{- else if and (or (kindIs "slice" .) (kindIs "map" .)) (empty .) }}true
{{- end }}
{{- end }}

{{/* One value, inline. Whole numbers print without an exponent (values arrive as floats). */}}
{{- define "keyless.toml.value" -}}
{{- if kindIs "string" . }}
{{- toJson . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}{{ $items = append $items (include "keyless.toml.value" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "map" . }}
{{- $pairs := list }}
{{- range $key := keys . | sortAlpha }}
{{- $value := get $ $key }}
{{- if not (include "keyless.toml.isEmpty" $value) }}
{{- $pairs = append $pairs (printf "%s = %s" (include "keyless.toml.key" $key) (include "keyless.toml.value" $value)) }}
{{- end }}
{{- end }}
{{- printf "{ %s }" (join ", " $pairs) }}
{{- else }}
{{- toJson . }}
{{- end }}
{{- end }}

{{/* A table: (dict "prefix" "a.b" "table" map). */}}
{{- define "keyless.toml.table" -}}
{{- $table := .table }}
{{- $prefix := .prefix }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if and (not (kindIs "map" $value)) (not (include "keyless.toml.isEmpty" $value)) }}
{{ include "keyless.toml.key" $key }} = {{ include "keyless.toml.value" $value }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if and (kindIs "map" $value) (not (include "keyless.toml.isEmpty" $value)) }}
{{- $name := include "keyless.toml.key" $key }}
{{- if $prefix }}{{ $name = printf "%s.%s" $prefix $name }}{{ end }}

[{{ $name }}]
{{- include "keyless.toml.table" (dict "prefix" $name "table" $value) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The effective config as keyless's TOML config file.
*/}}
{{- define "keyless.configToml" -}}
# keyless config file, rendered by the keyless Helm chart from .Values.config.
{{- include "keyless.toml.table" (dict "prefix" "" "table" (include "keyless.effectiveConfig" . | fromYaml)) }}
{{- end }}

{{/*
The ConfigMap that holds config.toml, in both modes.
*/}}
{{- define "keyless.configMapName" -}}
{{- include "keyless.fullname" . }}
{{- end }}

{{/*
A checksum of the config, for a pod annotation that rolls the pods when it changes.
*/}}
{{- define "keyless.configChecksum" -}}
{{- include "keyless.configToml" . | sha256sum }}
{{- end }}

{{/*
The keyless container, shared by the gateway Deployment and the sidecar.
Call with (dict "ctx" <keyless scope> "sidecar" <bool>).
*/}}
{{- define "keyless.container" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $sidecar := .sidecar }}
name: keyless
image: {{ include "keyless.image" $ctx | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if $sidecar }}
# A native sidecar: the kubelet starts it before the app's containers, keeps it running
# beside them, and stops it after them.
restartPolicy: Always
{{- end }}
args:
  - serve
  {{- if $sidecar }}
  - {{ printf "--listen=%s:%d" $v.sidecar.listenAddress (int $v.sidecar.port) | quote }}
  {{- else }}
  - {{ printf "--listen=0.0.0.0:%d" (int $v.port) | quote }}
  {{- end }}
  - --config=/etc/keyless/config.toml
  {{- if and (not $sidecar) $v.admin.enabled }}
  # Needs --admin-listen (forthcoming).
  - {{ printf "--admin-listen=0.0.0.0:%d" (int $v.admin.port) | quote }}
  {{- end }}
  {{- with $v.shutdownGrace }}
  # Needs --shutdown-grace (forthcoming).
  - {{ printf "--shutdown-grace=%s" . | quote }}
  {{- end }}
  {{- range $v.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  - name: KEYLESS_LOG
    value: {{ $v.logLevel | quote }}
  {{- if and (not $sidecar) $v.appKeys.existingSecret }}
  # Read by keyless once app keys land (forthcoming).
  - name: KEYLESS_APP_KEYS_FILE
    value: {{ printf "/etc/keyless/app-keys/%s" $v.appKeys.key | quote }}
  {{- end }}
  {{- with $v.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $v.envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if not $sidecar }}
ports:
  - name: http
    containerPort: {{ $v.port }}
    protocol: TCP
  {{- if $v.admin.enabled }}
  - name: admin
    containerPort: {{ $v.admin.port }}
    protocol: TCP
  {{- end }}
{{- end }}
{{- if or (not $sidecar) $v.sidecar.probes.enabled }}
{{- $port := "http" }}
{{- if $sidecar }}{{ $port = $v.sidecar.probes.port | default $v.sidecar.port | int }}{{ end }}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ $port }}
  {{- toYaml $v.probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ $port }}
  {{- toYaml $v.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ $port }}
  {{- toYaml $v.probes.readiness | nindent 2 }}
{{- end }}
{{- if and (not $sidecar) (gt (int $v.preStopSleepSeconds) 0) }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ $v.preStopSleepSeconds }}
{{- end }}
volumeMounts:
  - name: keyless-config
    mountPath: /etc/keyless/config.toml
    subPath: config.toml
    readOnly: true
  {{- if and (not $sidecar) $v.appKeys.existingSecret }}
  - name: keyless-app-keys
    mountPath: /etc/keyless/app-keys
    readOnly: true
  {{- end }}
resources:
  {{- toYaml (ternary $v.sidecar.resources $v.resources $sidecar) | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
{{- end }}

{{/*
The pod volume that holds config.toml (from the release's ConfigMap).
*/}}
{{- define "keyless.configVolume" -}}
- name: keyless-config
  configMap:
    name: {{ include "keyless.configMapName" . }}
{{- end }}

{{/*
keyless as a native sidecar in another chart's pod. That chart lists keyless as a
dependency, sets `keyless.mode: sidecar` (keyless then renders only its ConfigMap), and
calls these with the keyless scope, .Subcharts.keyless:

  spec:
    template:
      metadata:
        annotations:
          checksum/keyless-config: {{ include "keyless.configChecksum" .Subcharts.keyless }}
        labels:
          {{- include "keyless.workloadIdentity.podLabels" .Subcharts.keyless | nindent 10 }}
      spec:
        initContainers:
          {{- include "keyless.sidecar" .Subcharts.keyless | nindent 10 }}
        containers:
          - name: app
            env:
              - name: OPENAI_BASE_URL
                value: {{ include "keyless.sidecar.baseURL" .Subcharts.keyless | quote }}
        volumes:
          {{- include "keyless.sidecar.volumes" .Subcharts.keyless | nindent 10 }}

"keyless.sidecar" is one item of an `initContainers:` list; "keyless.sidecar.volumes" one
item of a `volumes:` list. The app uses any API key. For workload identity the pod needs the
label and its ServiceAccount the annotation ("keyless.workloadIdentity.serviceAccountAnnotations").
Needs Kubernetes 1.29 or later.
*/}}
{{- define "keyless.sidecar" -}}
- {{ include "keyless.container" (dict "ctx" . "sidecar" true) | trim | indent 2 | trim }}
{{- end }}

{{- define "keyless.sidecar.volumes" -}}
{{- include "keyless.configVolume" . }}
{{- end }}

{{- define "keyless.sidecar.baseURL" -}}
{{- printf "http://127.0.0.1:%d/v1" (int .Values.sidecar.port) }}
{{- end }}
