{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "agent-manager.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agent-manager.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "agent-manager.namespace" -}}
{{- default .Release.Namespace .Values.namespace -}}
{{- end -}}

{{/* The agents' namespace: the provisioner's Pods and Lease. */}}
{{- define "agent-manager.agentsNamespace" -}}
{{- default (include "agent-manager.namespace" .) .Values.services.provisioner.agentsNamespace -}}
{{- end -}}

{{/* One component's name: <fullname>-<component>. */}}
{{- define "agent-manager.componentName" -}}
{{- printf "%s-%s" (include "agent-manager.fullname" .root) .component -}}
{{- end -}}

{{/* The Lease the provisioner elects its reconciler's leader on (lib/leader: agent-manager-<prefix>provisioner-reconciler). */}}
{{- define "agent-manager.leaseName" -}}
{{- regexReplaceAll "[^a-z0-9.-]" (printf "agent-manager-%sprovisioner-reconciler" .Values.kafka.topicPrefix) "-" -}}
{{- end -}}

{{/* AGENT_MANAGER_INSTANCE: the label of this release's agents (at most 63, a label value). */}}
{{- define "agent-manager.instance" -}}
{{- include "agent-manager.fullname" . | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{- define "agent-manager.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "agent-manager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agent-manager
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "ingest"). */}}
{{- define "agent-manager.componentLabels" -}}
{{ include "agent-manager.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "agent-manager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-manager.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every Pod of the release (services and the migration Job): what the NetworkPolicies select. */}}
{{- define "agent-manager.releaseSelector" -}}
app.kubernetes.io/name: {{ include "agent-manager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Image ------------------------------------------------------------------------------------ */}}

{{- define "agent-manager.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Services ---------------------------------------------------------------------------------- */}}

{{/* The enabled services, as a YAML map name → settings (`defaults` merged under each). */}}
{{- define "agent-manager.services" -}}
{{- $out := dict -}}
{{- range $name, $svc := .Values.services -}}
{{- if $svc.enabled -}}
{{- $merged := mergeOverwrite (deepCopy $.Values.defaults) (deepCopy $svc) -}}
{{- $_ := set $out $name $merged -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The consumer group of a service (lib: `<prefix>agent-manager-<service>`). */}}
{{- define "agent-manager.consumerGroup" -}}
{{- printf "%sagent-manager-%s" .root.Values.kafka.topicPrefix .component -}}
{{- end -}}

{{/* Configuration ---------------------------------------------------------------------------- */}}

{{/*
Refuses a secret in plain values: a variable lib/secrets.ts treats as secret (its list, or a name
with PASSWORD, SECRET, TOKEN, CREDENTIAL, PRIVATE or KEY) may only be a `vault:` reference.
Names ending in _FILE are paths and allowed. Called with (dict "env" map "where" "env").
*/}}
{{- define "agent-manager.refuseSecrets" -}}
{{- $listed := list "DATABASE_URL" "REDIS_URL" "SCHEMA_REGISTRY_URL" "S3_ACCESS_KEY_ID" "S3_SECRET_ACCESS_KEY" "VAULT_TOKEN" "KAFKA_SASL_USERNAME" "KAFKA_SASL_PASSWORD" "KAFKA_SSL_CA" "KAFKA_SSL_CERT" "KAFKA_SSL_KEY" "OTEL_EXPORTER_OTLP_HEADERS" -}}
{{- range $name, $value := .env -}}
{{- $secret := or (has $name $listed) (regexMatch "(PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|KEY)(_|$)" $name) -}}
{{- if and $secret (not (hasSuffix "_FILE" $name)) (not (hasPrefix "vault:" (toString $value))) -}}
{{- fail (printf "%s.%s is a secret: give it by reference (secrets.files with secrets.source, or a vault:<mount>/<path>#<key> value), never as a plain value" $.where $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The settings every component shares (the ConfigMap; inlined into the migration hook Job, which runs before the ConfigMap exists). */}}
{{- define "agent-manager.sharedConfig" -}}
{{- $v := .Values -}}
{{- if not $v.kafka.brokers }}{{ fail "kafka.brokers is required (KAFKA_BROKERS: host:port,…)" }}{{ end -}}
{{- include "agent-manager.refuseSecrets" (dict "env" $v.env "where" "env") -}}
KAFKA_BROKERS: {{ $v.kafka.brokers | quote }}
KAFKA_SECURITY_PROTOCOL: {{ $v.kafka.securityProtocol | quote }}
KAFKA_CLIENT_ID: {{ $v.kafka.clientId | quote }}
TOPIC_PREFIX: {{ $v.kafka.topicPrefix | quote }}
TOPIC_PARTITIONS: {{ $v.kafka.partitions | toString | quote }}
TOPIC_REPLICATION_FACTOR: {{ $v.kafka.replicationFactor | toString | quote }}
TOPIC_MIN_INSYNC_REPLICAS: {{ $v.kafka.minInsyncReplicas | toString | quote }}
DATABASE_SCHEMA: {{ $v.database.schema | quote }}
DATABASE_POOL_MAX: {{ $v.database.poolMax | toString | quote }}
LOG_LEVEL: {{ $v.logLevel | quote }}
HTTP_HOST: "0.0.0.0"
HTTP_PORT: {{ $v.metricsPort | toString | quote }}
SHUTDOWN_GRACE_MS: {{ $v.shutdown.graceMs | toString | quote }}
{{- with $v.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- with $v.vault.address }}
VAULT_ADDR: {{ . | quote }}
{{- end }}
{{- with $v.vault.namespace }}
VAULT_NAMESPACE: {{ . | quote }}
{{- end }}
{{- range $name, $value := $v.env }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* The archive's settings: the archiver's ConfigMap and the hook Job's `s3 init` (keys only by reference). */}}
{{- define "agent-manager.archiveConfig" -}}
{{- $a := .Values.archive -}}
{{- if not $a.bucket }}{{ fail "archive.bucket is required while services.archiver.enabled (or archive.initBucket): ARCHIVE_BUCKET, the audit archive's S3 bucket (made by `agent-manager s3 init`); or set services.archiver.enabled=false" }}{{ end -}}
{{- if not $a.s3.region }}{{ fail "archive.s3.region is required while services.archiver.enabled (or archive.initBucket): S3_REGION, e.g. eu-west-1" }}{{ end -}}
{{- $files := $a.credentials.files | default dict -}}
{{- if and $files (not (and (hasKey $files "S3_ACCESS_KEY_ID") (hasKey $files "S3_SECRET_ACCESS_KEY"))) }}{{ fail "archive.credentials.files names S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY together or neither (neither: the AWS SDK's default chain, e.g. IRSA with archive.credentials.roleArn)" }}{{ end -}}
ARCHIVE_BUCKET: {{ $a.bucket | quote }}
{{- with $a.prefix }}
ARCHIVE_PREFIX: {{ . | quote }}
{{- end }}
ARCHIVE_RETENTION_DAYS: {{ $a.retentionDays | toString | quote }}
S3_REGION: {{ $a.s3.region | quote }}
{{- with $a.s3.endpoint }}
S3_ENDPOINT: {{ . | quote }}
{{- end }}
{{- if not (kindIs "invalid" $a.s3.forcePathStyle) }}
S3_FORCE_PATH_STYLE: {{ $a.s3.forcePathStyle | toString | quote }}
{{- end }}
{{- with $a.signing }}{{ if .signer }}
{{- if and (eq .signer "vault-transit") (not $.Values.vault.address) }}{{ fail "archive.signing.signer=vault-transit needs vault.address (VAULT_ADDR), and the token by reference (VAULT_TOKEN in secrets.files)" }}{{ end }}
{{- if and (eq .signer "local") (not .localKeyFile) }}{{ fail "archive.signing.signer=local needs archive.signing.localKeyFile (AUDIT_SIGNING_KEY_FILE, the keyring file's path in the Pod)" }}{{ end }}
AUDIT_SIGNER: {{ .signer | quote }}
{{- if eq .signer "vault-transit" }}
AUDIT_TRANSIT_MOUNT: {{ .transit.mount | quote }}
AUDIT_TRANSIT_KEY: {{ .transit.key | quote }}
{{- else }}
AUDIT_SIGNING_KEY_FILE: {{ .localKeyFile | quote }}
{{- end }}
AUDIT_KEY_ROTATION_INTERVAL: {{ .rotationInterval | toString | quote }}
{{- end }}{{ end }}
{{- end -}}

{{/* Annotations of a ServiceAccount that reaches S3 (IRSA, workload identity). */}}
{{- define "agent-manager.s3ServiceAccountAnnotations" -}}
{{- $c := .Values.archive.credentials -}}
{{- with $c.roleArn }}
eks.amazonaws.com/role-arn: {{ . | quote }}
{{- end }}
{{- with $c.serviceAccountAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Where a component's secret files are: (dict "root" $ "component" "ingest"). */}}
{{- define "agent-manager.secretDir" -}}
{{- if eq .root.Values.secrets.source "vaultAgent" -}}/vault/secrets{{- else -}}{{ .root.Values.secrets.mountPath }}{{- end -}}
{{- end -}}

{{/* The `<NAME>_FILE` settings of a component: (dict "root" $ "component" "ingest" "kafka" true). */}}
{{- define "agent-manager.secretFileEnv" -}}
{{- $v := .root.Values -}}
{{- if ne $v.secrets.source "none" -}}
{{- $dir := include "agent-manager.secretDir" . -}}
{{- range $name, $file := $v.secrets.files }}
{{ $name }}_FILE: {{ printf "%s/%s" $dir $file | quote }}
{{- end }}
{{- if and .kafka (eq $v.kafka.securityProtocol "ssl") }}
{{- range $name, $file := $v.secrets.kafkaTlsFiles }}
{{ $name }}_FILE: {{ printf "%s/%s" $dir $file | quote }}
{{- end }}
{{- end }}
{{- if .s3 }}
{{- range $name, $file := $v.archive.credentials.files }}
{{ $name }}_FILE: {{ printf "%s/%s" $dir $file | quote }}
{{- end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The secret volume of a component (existingSecret: a projected volume of the shared Secret and its Kafka Secret; csi: its SecretProviderClass). */}}
{{- define "agent-manager.secretVolume" -}}
{{- $v := .root.Values -}}
{{- if eq $v.secrets.source "existingSecret" }}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ required "secrets.existingSecret.name is required with secrets.source=existingSecret" $v.secrets.existingSecret.name }}
          items:
            {{- range $name, $file := $v.secrets.files }}
            - {key: {{ $file | quote }}, path: {{ $file | quote }}}
            {{- end }}
      {{- if and .kafka (eq $v.kafka.securityProtocol "ssl") }}
      - secret:
          name: {{ $v.secrets.existingSecret.kafkaTlsName | replace "{service}" .component }}
          items:
            {{- range $name, $file := $v.secrets.kafkaTlsFiles }}
            - {key: {{ $file | quote }}, path: {{ $file | quote }}}
            {{- end }}
      {{- end }}
      {{- if and .s3 $v.archive.credentials.files }}
      - secret:
          name: {{ default $v.secrets.existingSecret.name $v.archive.credentials.existingSecret }}
          items:
            {{- range $name, $file := $v.archive.credentials.files }}
            - {key: {{ $file | quote }}, path: {{ $file | quote }}}
            {{- end }}
      {{- end }}
{{- else if eq $v.secrets.source "vaultAgent" }}
- name: vault-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: {{ $v.secrets.vaultAgent.tokenAudience | quote }}
          expirationSeconds: 3600
{{- else if eq $v.secrets.source "csi" }}
- name: secrets
  csi:
    driver: {{ $v.secrets.csi.driver }}
    readOnly: true
    volumeAttributes:
      secretProviderClass: {{ $v.secrets.csi.secretProviderClass | replace "{service}" .component | quote }}
{{- end }}
{{- end -}}

{{- define "agent-manager.secretVolumeMount" -}}
{{- if has .root.Values.secrets.source (list "existingSecret" "csi") }}
- name: secrets
  mountPath: {{ .root.Values.secrets.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Vault Agent injector annotations of a component's Pod. */}}
{{- define "agent-manager.vaultAgentAnnotations" -}}
{{- $v := .root.Values -}}
{{- if eq $v.secrets.source "vaultAgent" }}
vault.hashicorp.com/agent-inject: "true"
vault.hashicorp.com/role: {{ $v.secrets.vaultAgent.role | replace "{service}" .component | quote }}
{{- /* The Pod mounts no API token: the agent logs in with a projected token of Vault's audience. */}}
vault.hashicorp.com/agent-service-account-token-volume-name: vault-token
{{- $kafkaFiles := values $v.secrets.kafkaTlsFiles }}
{{- $s3Files := values ($v.archive.credentials.files | default dict) }}
{{- range $file, $secret := $v.secrets.vaultAgent.secrets }}
{{- /* The migration Job needs no Kafka certificate (and has no principal to issue one for); only S3's users get its keys. */}}
{{- if and (or $.kafka (not (has $file $kafkaFiles))) (or $.s3 (not (has $file $s3Files))) }}
vault.hashicorp.com/agent-inject-secret-{{ $file }}: {{ $secret.path | replace "{service}" $.component | quote }}
{{- with $secret.template }}
vault.hashicorp.com/agent-inject-template-{{ $file }}: {{ . | replace "{service}" $.component | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.secrets.vaultAgent.annotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* terminationGracePeriodSeconds: above preStop + the drain (SHUTDOWN_GRACE_MS), or refused. */}}
{{- define "agent-manager.terminationGrace" -}}
{{- $s := .Values.shutdown -}}
{{- $drain := div (add $s.graceMs 999) 1000 -}}
{{- $floor := add $drain $s.preStopSleepSeconds -}}
{{- if kindIs "invalid" $s.terminationGracePeriodSeconds -}}
{{- add $floor $s.marginSeconds -}}
{{- else -}}
{{- if le (int $s.terminationGracePeriodSeconds) (int $floor) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%v) must be above preStopSleepSeconds + the drain, shutdown.graceMs (%d s in all): the kubelet would SIGKILL a draining service" $s.terminationGracePeriodSeconds $floor) -}}
{{- end -}}
{{- $s.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Checks a service's replica bounds: (dict "root" $ "component" name "svc" settings). */}}
{{- define "agent-manager.checkReplicas" -}}
{{- $a := .svc.autoscaling -}}
{{- $partitions := int .root.Values.kafka.partitions -}}
{{- if gt (int $a.maxReplicas) $partitions -}}
{{- fail (printf "services.%s.autoscaling.maxReplicas (%v) is above kafka.partitions (%d): a consumer group cannot use more consumers than partitions, the extra replicas would sit idle" .component $a.maxReplicas $partitions) -}}
{{- end -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "services.%s.autoscaling.minReplicas (%v) is above maxReplicas (%v)" .component $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- if gt (int .svc.replicas) $partitions -}}
{{- fail (printf "services.%s.replicas (%v) is above kafka.partitions (%d): the extra replicas would sit idle" .component .svc.replicas $partitions) -}}
{{- end -}}
{{- end -}}
