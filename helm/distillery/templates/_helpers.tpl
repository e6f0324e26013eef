{{/* Names and labels. */}}
{{- define "distillery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "distillery.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Object name for a component: <fullname>-<component>, within 63 characters. */}}
{{- define "distillery.componentName" -}}
{{- printf "%s-%s" (include "distillery.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "distillery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distillery.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "distillery.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "distillery.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: distillery
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "distillery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "distillery.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "distillery.secretName" -}}
{{- default (include "distillery.componentName" (dict "root" . "component" "secrets")) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* True ("true") when the chart has a Secret to mount: an existing one or values to put in one. */}}
{{- define "distillery.hasSecret" -}}
{{- $s := .Values.secrets -}}
{{- if or $s.existingSecret $s.apiKeys $s.modelApiKey $s.esApiKey -}}true{{- end -}}
{{- end -}}

{{/* Images. */}}
{{- define "distillery.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "distillery.trainImage" -}}
{{- $tag := default (printf "%s-train" (default .Chart.AppVersion .Values.image.tag)) .Values.image.trainTag -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* Where the gateway finds the model server; "" = the embedded in-process engine. */}}
{{- define "distillery.modelUrl" -}}
{{- if eq .Values.model.source "vllm" -}}
{{- printf "http://%s:%d/v1" (include "distillery.componentName" (dict "root" . "component" "vllm")) (int .Values.vllm.port) -}}
{{- else if eq .Values.model.source "external" -}}
{{- .Values.model.external.url -}}
{{- end -}}
{{- end -}}

{{/* The bundled Elastic chart's HTTP service (its name is <clusterName>-<nodeGroup>). */}}
{{- define "distillery.bundledEsName" -}}
{{- printf "%s-%s" (.Values.elasticsearch.clusterName | default "elasticsearch") (.Values.elasticsearch.nodeGroup | default "master") -}}
{{- end -}}

{{/* Elasticsearch URL for the gateway and the index Job; "" = the embedded index. */}}
{{- define "distillery.esUrl" -}}
{{- if eq .Values.retrieval.backend "elasticsearch" -}}
{{- if .Values.retrieval.elasticsearch.url -}}
{{- .Values.retrieval.elasticsearch.url -}}
{{- else if .Values.elasticsearch.enabled -}}
{{- printf "http://%s:%d" (include "distillery.bundledEsName" .) (int (.Values.elasticsearch.httpPort | default 9200)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* TCP port of a URL: explicit, else 443 for https and 80 for http. */}}
{{- define "distillery.urlPort" -}}
{{- $u := urlParse . -}}
{{- $hostport := splitList ":" $u.host -}}
{{- if gt (len $hostport) 1 -}}
{{- last $hostport -}}
{{- else if eq $u.scheme "https" -}}
443
{{- else -}}
80
{{- end -}}
{{- end -}}

{{/*
Checks that need more than one value at a time (values.schema.json checks each value alone).
Included from the gateway Deployment, so every render runs them.
*/}}
{{- define "distillery.validate" -}}
{{- $v := .Values -}}
{{- if and (eq $v.model.source "vllm") (eq $v.vllm.modelSource "pvc") (not $v.persistence.models.enabled) -}}
{{- fail "vllm.modelSource=pvc reads the model from persistence.models: set persistence.models.enabled=true (with existingClaim or a size), or use vllm.modelSource=download with vllm.download.url" -}}
{{- end -}}
{{- if and (eq $v.model.source "vllm") (eq $v.vllm.modelSource "download") (not $v.vllm.download.url) -}}
{{- fail "vllm.modelSource=download needs vllm.download.url (an https URL of a .tar.gz of the model folder)" -}}
{{- end -}}
{{- if and $v.vllm.loraAdapters (not $v.persistence.models.enabled) (eq $v.model.source "vllm") -}}
{{- fail "vllm.loraAdapters are read from persistence.models: set persistence.models.enabled=true" -}}
{{- end -}}
{{- if eq $v.retrieval.backend "elasticsearch" -}}
{{- if and (not $v.retrieval.elasticsearch.url) (not $v.elasticsearch.enabled) -}}
{{- fail "retrieval.backend=elasticsearch needs retrieval.elasticsearch.url (an external cluster) or elasticsearch.enabled=true (the optional Elastic chart, see helm/README.md); retrieval.backend=embedded uses the on-disk index instead" -}}
{{- end -}}
{{- if and $v.elasticsearch.enabled (not $v.retrieval.elasticsearch.url) -}}
{{- if not (hasKey .Subcharts "elasticsearch") -}}
{{- fail "elasticsearch.enabled=true but the Elastic chart is not in charts/: render the copy made by `make chart-with-es` (it declares the dependency and runs `helm dependency update`), or point retrieval.elasticsearch.url at an existing cluster" -}}
{{- end -}}
{{- if ne ($v.elasticsearch.protocol | default "https") "http" -}}
{{- fail "the bundled Elasticsearch must run with elasticsearch.protocol=http and xpack.security disabled (see helm/distillery/examples/bundled-es.yaml): the gateway authenticates to Elasticsearch with an API key, not the Elastic chart's generated password and CA; for a secured cluster set retrieval.elasticsearch.url and secrets.esApiKey" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $v.networkPolicy.enabled -}}
{{- if and (eq $v.model.source "external") (not $v.model.external.networkPolicyPeers) -}}
{{- fail "networkPolicy.enabled=true blocks the gateway from model.external.url: list where it runs in model.external.networkPolicyPeers (ipBlock CIDRs or namespace/pod selectors), or set networkPolicy.enabled=false" -}}
{{- end -}}
{{- if and (eq $v.retrieval.backend "elasticsearch") $v.retrieval.elasticsearch.url (not $v.retrieval.elasticsearch.networkPolicyPeers) -}}
{{- fail "networkPolicy.enabled=true blocks the gateway from retrieval.elasticsearch.url: list where it runs in retrieval.elasticsearch.networkPolicyPeers (ipBlock CIDRs or namespace/pod selectors), or set networkPolicy.enabled=false" -}}
{{- end -}}
{{- end -}}
{{- if and $v.jobs.index.enabled (ne $v.retrieval.backend "elasticsearch") -}}
{{- fail "jobs.index builds an Elasticsearch index: it needs retrieval.backend=elasticsearch" -}}
{{- end -}}
{{- end -}}

{{/* Render one DISTILLERY_* value: lists as JSON, whole floats without exponent. */}}
{{- define "distillery.envValue" -}}
{{- if or (kindIs "slice" .) (kindIs "map" .) -}}
{{- toJson . -}}
{{- else if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
Volumes and mounts of the optional PVCs named in .keys ("models", "data"), skipping disabled
ones; YAML list items, or "" when there are none.
*/}}
{{- define "distillery.pvcVolumes" -}}
{{- $root := .root -}}
{{- $out := list -}}
{{- range $key := .keys -}}
{{- $p := index $root.Values.persistence $key -}}
{{- if $p.enabled -}}
{{- $claim := default (include "distillery.componentName" (dict "root" $root "component" $key)) $p.existingClaim -}}
{{- $out = append $out (dict "name" $key "persistentVolumeClaim" (dict "claimName" $claim)) -}}
{{- end -}}
{{- end -}}
{{- if $out -}}{{- toYaml $out -}}{{- end -}}
{{- end -}}

{{- define "distillery.pvcMounts" -}}
{{- $root := .root -}}
{{- $readOnly := .readOnly -}}
{{- $out := list -}}
{{- range $key := .keys -}}
{{- $p := index $root.Values.persistence $key -}}
{{- if $p.enabled -}}
{{- $mount := dict "name" $key "mountPath" $p.mountPath -}}
{{- if $readOnly -}}{{- $_ := set $mount "readOnly" true -}}{{- end -}}
{{- $out = append $out $mount -}}
{{- end -}}
{{- end -}}
{{- if $out -}}{{- toYaml $out -}}{{- end -}}
{{- end -}}

{{/* Restricted container security (Pod Security Standard "restricted"). */}}
{{- define "distillery.restrictedSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Model name the gateway asks for. */}}
{{- define "distillery.modelName" -}}
{{- if .Values.model.name -}}
{{- .Values.model.name -}}
{{- else if eq .Values.model.source "vllm" -}}
{{- .Values.vllm.servedModelName -}}
{{- end -}}
{{- end -}}

{{/*
Pod and container security for a workload. jailed=true: it runs model-written code through
nsjail (the gateway, the generate Job), so with sandbox.enabled it gets what nsjail needs
(sandbox.securityMode); everything else runs restricted, as uid 10001.
*/}}
{{- define "distillery.podSecurityContext" -}}
{{- if and .jailed .root.Values.sandbox.enabled -}}
fsGroup: 10001
{{- else -}}
runAsNonRoot: true
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- end -}}

{{- define "distillery.containerSecurityContext" -}}
{{- $sb := .root.Values.sandbox -}}
{{- if not (and .jailed $sb.enabled) -}}
{{- include "distillery.restrictedSecurityContext" . -}}
{{- else if eq $sb.securityMode "privileged" -}}
# nsjail creates user/mount/pid/net/ipc/uts/cgroup namespaces, mounts a private root and
# tmpfs, and writes cgroup v1 limits under /sys/fs/cgroup: root in a privileged container
# (the jailed code runs as uid 65534 in its own namespaces, without a network).
# See helm/README.md "Sandbox privileges".
privileged: true
allowPrivilegeEscalation: true
runAsUser: 0
runAsNonRoot: false
readOnlyRootFilesystem: true
{{- else -}}
# Narrower than privileged: SYS_ADMIN (namespaces, mounts), SETUID/SETGID (drop the code to
# uid 65534), SETPCAP (drop its capabilities), NET_ADMIN (loopback in its network namespace),
# KILL (kill the jail's processes when a run closes);
# seccomp and AppArmor profiles that allow clone/mount. See helm/README.md "Sandbox privileges".
allowPrivilegeEscalation: true
runAsUser: 0
runAsNonRoot: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  add:
    {{- toYaml $sb.capabilities | nindent 4 }}
seccompProfile:
  {{- toYaml $sb.seccompProfile | nindent 2 }}
appArmorProfile:
  {{- toYaml $sb.appArmorProfile | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* "true" when the gateway mounts the node's cgroupfs (capabilities mode + hostCgroupfs). */}}
{{- define "distillery.hostCgroupfs" -}}
{{- $sb := .Values.sandbox -}}
{{- if and $sb.enabled (eq $sb.securityMode "capabilities") $sb.hostCgroupfs -}}true{{- end -}}
{{- end -}}

{{/* Container resources as YAML with `count` GPUs of `name` added to requests and limits. */}}
{{- define "distillery.resourcesWithGpu" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if gt (int .count) 0 -}}
{{- $gpu := dict .name (int .count) -}}
{{- $_ := set $resources "limits" (merge (default (dict) $resources.limits) $gpu) -}}
{{- $_ := set $resources "requests" (merge (default (dict) $resources.requests) $gpu) -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}
