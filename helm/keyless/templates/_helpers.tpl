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
{{- /* Shared limits: the URL comes as KEYLESS_REDIS_URL from a Secret, never the file. */}}
{{- $limits := deepCopy (get $out "limits" | default dict) }}
{{- if hasKey $limits "redis_url" }}
{{- fail "config.limits.redis_url would put the Redis URL (and any password in it) in a ConfigMap: set limits.redisUrl or limits.existingSecret instead" }}
{{- end }}
{{- if include "keyless.redis.enabled" . }}
{{- if not (hasKey $limits "backend") }}
{{- $_ := set $limits "backend" "redis" }}
{{- end }}
{{- $_ := set $out "limits" $limits }}
{{- else if eq (toString (get $limits "backend")) "redis" }}
{{- fail "config.limits.backend redis needs a Redis: set limits.redisUrl or limits.existingSecret" }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* "true" when shared limits are on: a Redis URL in values or in an existing Secret. */}}
{{- define "keyless.redis.enabled" -}}
{{- if and .Values.limits.redisUrl .Values.limits.existingSecret }}
{{- fail "limits: set redisUrl or existingSecret, not both" }}
{{- end }}
{{- if or .Values.limits.redisUrl .Values.limits.existingSecret }}true{{ end }}
{{- end }}

{{/* The Secret the chart renders (the config with app key hashes, the Redis URL). */}}
{{- define "keyless.secretName" -}}
{{- include "keyless.fullname" . }}
{{- end }}

{{/*
"true" in gateway mode with apps: config.toml then holds the apps' key hashes and lives in
the chart's Secret instead of the ConfigMap.
*/}}
{{- define "keyless.apps.enabled" -}}
{{- if .Values.appKeys }}
{{- fail "appKeys was replaced by gateway.apps and gateway.appKeys.existingSecret (see values.yaml)" }}
{{- end }}
{{- if .Values.gateway.apps }}
{{- if ne .Values.mode "gateway" }}
{{- fail "gateway.apps is for gateway mode: a sidecar listens on loopback and serves only its pod" }}
{{- end }}
true
{{- end }}
{{- end }}

{{/*
gateway.appKeys.existingSecret as Helm's lookup returns it, as JSON: {} when Helm cannot
read it. On one line of its own so that tests/helm/check_chart.py can stand in for the
cluster.
*/}}
{{- define "keyless.appKeys.lookup" -}}
{{- lookup "v1" "Secret" .Release.Namespace .Values.gateway.appKeys.existingSecret | toJson }}
{{- end }}

{{/*
The [[apps]] tables of config.toml. Each app's key hash comes from its keySha256, or from
gateway.appKeys.existingSecret (read with lookup: at install and upgrade, not in
`helm template`), never both.
*/}}
{{- define "keyless.appsToml" -}}
{{- $secretName := .Values.gateway.appKeys.existingSecret }}
{{- $stored := dict }}
{{- if $secretName }}
{{- range $i, $app := .Values.gateway.apps }}
{{- if $app.keySha256 }}
{{- fail (printf "gateway.apps[%d] (%s): keySha256 and gateway.appKeys.existingSecret both give its key hash: keep one" $i $app.name) }}
{{- end }}
{{- end }}
{{- $found := include "keyless.appKeys.lookup" . | fromJson }}
{{- if not $found }}
{{- fail (printf "gateway.appKeys.existingSecret %q: no such Secret in namespace %q, or Helm cannot read it here (helm template and --dry-run=client never can: use --dry-run=server, or the apps' keySha256)" $secretName .Release.Namespace) }}
{{- end }}
{{- $stored = $found.data | default dict }}
{{- end }}
{{- range $i, $app := .Values.gateway.apps }}
{{- $at := printf "gateway.apps[%d] (%s)" $i $app.name }}
{{- $hash := "" }}
{{- if $app.keySha256 }}
{{- $hash = $app.keySha256 }}
{{- else if $secretName }}
{{- $entry := default $app.name $app.secretKey }}
{{- if not (hasKey $stored $entry) }}
{{- fail (printf "%s: Secret %q has no entry %q with its key hash" $at $secretName $entry) }}
{{- end }}
{{- $hash = get $stored $entry | b64dec | trim }}
{{- else }}
{{- fail (printf "%s: no key hash: set its keySha256 (printf %%s \"$KEY\" | keyless hash-key) or gateway.appKeys.existingSecret" $at) }}
{{- end }}
{{- if not (regexMatch "^[0-9a-f]{64}$" $hash) }}
{{- fail (printf "%s: the key hash must be 64 lowercase hex digits, the output of `keyless hash-key` (not the key itself)" $at) }}
{{- end }}

[[apps]]
name = {{ toJson $app.name }}
key_sha256 = {{ toJson $hash }}
{{- with $app.models }}
models = {{ include "keyless.toml.value" . }}
{{- end }}
{{- with $app.rpm }}
rpm = {{ include "keyless.toml.value" . }}
{{- end }}
{{- with $app.tpm }}
tpm = {{ include "keyless.toml.value" . }}
{{- end }}
{{- end }}
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
{{- if include "keyless.apps.enabled" . }}
{{- include "keyless.appsToml" . }}
{{- end }}
{{- end }}

{{/*
The ConfigMap that holds config.toml, in both modes.
*/}}
{{- define "keyless.configMapName" -}}
{{- include "keyless.fullname" . }}
{{- end }}

{{/*
A checksum of the config (and of which Secret holds the Redis URL), for a pod annotation
that rolls the pods when it changes. Not of the URL itself: it may hold a password, and a
hash of it in the pod's metadata could be guessed against.
*/}}
{{- define "keyless.configChecksum" -}}
{{- printf "%s\n%s/%s" (include "keyless.configToml" .) .Values.limits.existingSecret .Values.limits.existingSecretKey | sha256sum }}
{{- end }}

{{/*
shutdownGrace in whole seconds. keyless parses it with humantime; the chart accepts the
subset it can also add up: hours, minutes and seconds, e.g. 30s, 2m, 1m30s.
*/}}
{{- define "keyless.shutdownGraceSeconds" -}}
{{- $grace := toString .Values.shutdownGrace }}
{{- if or (eq $grace "") (not (regexMatch "^([0-9]+h)?([0-9]+m)?([0-9]+s)?$" $grace)) }}
{{- fail (printf "shutdownGrace %q: write whole hours, minutes and seconds, e.g. 30s, 2m or 1m30s" $grace) }}
{{- end }}
{{- $seconds := 0 }}
{{- range regexFindAll "[0-9]+[hms]" $grace -1 }}
{{- $unit := regexFind "[hms]$" . }}
{{- $n := trimSuffix $unit . | atoi }}
{{- $seconds = add $seconds (mul $n (get (dict "h" 3600 "m" 60 "s" 1) $unit)) }}
{{- end }}
{{- $seconds }}
{{- end }}

{{/*
The gateway pod's terminationGracePeriodSeconds: it must cover the preStop sleep and then
keyless's shutdown grace, or the kubelet kills streams keyless is still draining. Unset:
sleep + grace + 5. Set: checked.
*/}}
{{- define "keyless.terminationGracePeriodSeconds" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (include "keyless.shutdownGraceSeconds" . | atoi) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 5 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) plus shutdownGrace (%s), %d s in all, or the kubelet kills streams keyless is still draining; leave it empty to have it computed" (int .Values.terminationGracePeriodSeconds) (int .Values.preStopSleepSeconds) (toString .Values.shutdownGrace) $needed) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* A loopback address: the kubelet cannot reach a listener there. */}}
{{- define "keyless.isLoopback" -}}
{{- if or (hasPrefix "127." .) (has . (list "localhost" "::1" "[::1]")) }}true{{ end }}
{{- end }}

{{/* One HTTP probe: (dict "path" "/readyz" "port" <name or number> "timing" <map>). */}}
{{- define "keyless.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{- with .timing }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The keyless container, shared by the gateway Deployment and the sidecar.
Call with (dict "ctx" <keyless scope> "sidecar" <bool>).
*/}}
{{- define "keyless.container" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $sidecar := .sidecar }}
{{- /* The probes: which port, and path and timing of each ("" when there are none). */}}
{{- $probePort := "" }}
{{- $probes := dict }}
{{- if $sidecar }}
{{- if $v.sidecar.probes.enabled }}
{{- if $v.admin.enabled }}
{{- $probePort = int $v.admin.port }}
{{- else if include "keyless.isLoopback" $v.sidecar.listenAddress }}
{{- fail (printf "sidecar.probes.enabled needs admin.enabled: the kubelet cannot reach keyless on %s; or set sidecar.probes.enabled=false" $v.sidecar.listenAddress) }}
{{- else }}
{{- $probePort = int $v.sidecar.port }}
{{- end }}
{{- /* The startup probe waits for a token: the app's containers start only after it. */}}
{{- $probes = dict "startupProbe" (list "/readyz" $v.sidecar.probes.startup) "livenessProbe" (list "/healthz" $v.sidecar.probes.liveness) "readinessProbe" (list "/readyz" $v.sidecar.probes.readiness) }}
{{- end }}
{{- else }}
{{- $probePort = $v.probes.port }}
{{- if and (eq $probePort "admin") (not $v.admin.enabled) }}
{{- fail "probes.port admin needs admin.enabled" }}
{{- end }}
{{- $probes = dict "startupProbe" (list "/healthz" $v.probes.startup) "livenessProbe" (list "/healthz" $v.probes.liveness) "readinessProbe" (list "/readyz" $v.probes.readiness) }}
{{- end -}}
name: keyless
image: {{ include "keyless.image" $ctx | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if $sidecar }}
# A native sidecar: the kubelet starts it before the app's containers, keeps it running
# beside them, and stops it after them.
restartPolicy: Always
{{- end }}
{{- /* keyless refuses a listener that is not loopback without app keys unless told
that the network is the guard: say so only when the values do. */}}
{{- $allowUnauthenticated := false }}
{{- if $sidecar }}
{{- if not (include "keyless.isLoopback" $v.sidecar.listenAddress) }}
{{- if not $v.sidecar.allowUnauthenticated }}
{{- fail (printf "sidecar.listenAddress %s is not loopback: anything that reaches the pod could use its token, and keyless refuses that without app keys. Keep 127.0.0.1 (with admin.enabled for the probes), or set sidecar.allowUnauthenticated=true if a NetworkPolicy keeps everyone else out" $v.sidecar.listenAddress) }}
{{- end }}
{{- $allowUnauthenticated = true }}
{{- end }}
{{- else if not (include "keyless.apps.enabled" $ctx) }}
{{- if not $v.gateway.allowUnauthenticated }}
{{- fail (printf "gateway mode listens on 0.0.0.0:%d for anyone who reaches the Service, and keyless refuses that without app keys: define gateway.apps (see values.yaml and docs/deploy.md), or set gateway.allowUnauthenticated=true if a NetworkPolicy (networkPolicy.enabled) or the network decides who may call it" (int $v.port)) }}
{{- end }}
{{- $allowUnauthenticated = true }}
{{- end }}
args:
  - serve
  {{- if $sidecar }}
  - {{ printf "--listen=%s:%d" $v.sidecar.listenAddress (int $v.sidecar.port) | quote }}
  {{- else }}
  - {{ printf "--listen=0.0.0.0:%d" (int $v.port) | quote }}
  {{- end }}
  {{- if $allowUnauthenticated }}
  # Chosen in values: the network, not app keys, decides who may call keyless.
  - --allow-unauthenticated
  {{- end }}
  - --config=/etc/keyless/config.toml
  {{- if $v.admin.enabled }}
  # /metrics, /healthz and /readyz only: it never reaches Azure.
  - {{ printf "--admin-listen=0.0.0.0:%d" (int $v.admin.port) | quote }}
  {{- end }}
  - {{ printf "--shutdown-grace=%s" (toString $v.shutdownGrace) | quote }}
  {{- if include "keyless.caBundle.enabled" $ctx }}
  - {{ printf "--ca-file=/etc/keyless/ca/%s" $v.caBundle.key | quote }}
  {{- end }}
  {{- range $v.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  - name: KEYLESS_LOG
    value: {{ $v.logLevel | quote }}
  {{- if include "keyless.redis.enabled" $ctx }}
  # Shared limits: from a Secret, since the URL may hold a password.
  - name: KEYLESS_REDIS_URL
    valueFrom:
      secretKeyRef:
        {{- if $v.limits.existingSecret }}
        name: {{ $v.limits.existingSecret }}
        key: {{ $v.limits.existingSecretKey }}
        {{- else }}
        name: {{ include "keyless.secretName" $ctx }}
        key: redis-url
        {{- end }}
  {{- end }}
  {{- with $v.otel }}
  {{- if .endpoint }}
  # Traces over OTLP (the SDK's own variables).
  - name: OTEL_EXPORTER_OTLP_ENDPOINT
    value: {{ .endpoint | quote }}
  - name: OTEL_EXPORTER_OTLP_PROTOCOL
    value: {{ .protocol | default "http/protobuf" | quote }}
  - name: OTEL_SERVICE_NAME
    value: {{ .serviceName | default $ctx.Release.Name | quote }}
  {{- end }}
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
{{- else if $v.admin.enabled }}
# Named for the whole pod: the app's containers may have an `admin` port of their own.
ports:
  - name: keyless-admin
    containerPort: {{ $v.admin.port }}
    protocol: TCP
{{- end }}
{{- range $kind := list "startupProbe" "livenessProbe" "readinessProbe" }}
{{- with get $probes $kind }}
{{- if index . 1 }}
{{ $kind }}:
  {{- include "keyless.probe" (dict "path" (index . 0) "port" $probePort "timing" (index . 1)) | nindent 2 }}
{{- end }}
{{- end }}
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
  {{- if include "keyless.caBundle.enabled" $ctx }}
  - name: keyless-ca
    mountPath: /etc/keyless/ca
    readOnly: true
  {{- end }}
resources:
  {{- toYaml (ternary $v.sidecar.resources $v.resources $sidecar) | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
{{- end }}

{{/* "true" when caBundle names a ConfigMap or a Secret (not both). */}}
{{- define "keyless.caBundle.enabled" -}}
{{- if and .Values.caBundle.configMap .Values.caBundle.secret }}
{{- fail "caBundle: set configMap or secret, not both" }}
{{- end }}
{{- if or .Values.caBundle.configMap .Values.caBundle.secret }}true{{ end }}
{{- end }}

{{/*
The pod volumes keyless needs: config.toml (from the release's ConfigMap, or its Secret
when the file holds app key hashes) and, with caBundle, the CA certificates.
*/}}
{{- define "keyless.configVolume" -}}
- name: keyless-config
  {{- if include "keyless.apps.enabled" . }}
  secret:
    secretName: {{ include "keyless.secretName" . }}
    items:
      - key: config.toml
        path: config.toml
  {{- else }}
  configMap:
    name: {{ include "keyless.configMapName" . }}
  {{- end }}
{{- if include "keyless.caBundle.enabled" . }}
- name: keyless-ca
  {{- if .Values.caBundle.configMap }}
  configMap:
    name: {{ .Values.caBundle.configMap }}
  {{- else }}
  secret:
    secretName: {{ .Values.caBundle.secret }}
  {{- end }}
    items:
      - key: {{ .Values.caBundle.key }}
        path: {{ .Values.caBundle.key }}
{{- end }}
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
item of a `volumes:` list. The app uses any API key. By default keyless's admin listener
(/metrics, /healthz, /readyz; port "keyless.sidecar.adminPort", named keyless-admin) answers
the kubelet's probes on 0.0.0.0, and the startup probe holds the app's containers back until
keyless holds a token. For workload identity the pod needs the
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

{{/* The sidecar's admin port (metrics and probes), empty when admin is off: for the app
chart's NetworkPolicy or PodMonitor. */}}
{{- define "keyless.sidecar.adminPort" -}}
{{- if .Values.admin.enabled }}{{ int .Values.admin.port }}{{ end }}
{{- end }}
