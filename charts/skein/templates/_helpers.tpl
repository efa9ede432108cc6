{{/*
Names and labels shared by every template.
*/}}

{{/* Base name of every object: the release name, with the chart name unless it holds it. */}}
{{- define "skein.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "skein.namespace" -}}
{{- .Values.namespace.name -}}
{{- end -}}

{{- define "skein.master.name" -}}
{{- printf "%s-master" (include "skein.fullname" .) -}}
{{- end -}}

{{- define "skein.agent.name" -}}
{{- printf "%s-agent" (include "skein.fullname" .) -}}
{{- end -}}

{{- define "skein.datapath.name" -}}
{{- printf "%s-datapath" (include "skein.fullname" .) -}}
{{- end -}}

{{- define "skein.config.name" -}}
{{- printf "%s-config" (include "skein.fullname" .) -}}
{{- end -}}

{{- define "skein.rdmaConfig.name" -}}
{{- printf "%s-rdma-config" (include "skein.fullname" .) -}}
{{- end -}}

{{- define "skein.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "skein.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: skein
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (never change: selectors are immutable). */}}
{{- define "skein.selectorLabels" -}}
app.kubernetes.io/name: {{ .context.Chart.Name }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's objects. */}}
{{- define "skein.componentLabels" -}}
{{ include "skein.labels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Where the API server is, for host-network pods without kube-proxy (when kubernetesServiceHost is set). */}}
{{- define "skein.apiServerEnv" -}}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.kubernetesServiceHost | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.kubernetesServicePort | quote }}
{{- end -}}

{{/* The cluster CIDRs, comma-separated. */}}
{{- define "skein.clusterCIDRs" -}}
{{- $parts := list -}}
{{- range .Values.network.clusterCIDRs -}}
{{- $parts = append $parts .cidr -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/* The per-node subnet prefixes, comma-separated, in the order of the cluster CIDRs. */}}
{{- define "skein.nodeSubnetPrefixes" -}}
{{- $parts := list -}}
{{- range .Values.network.clusterCIDRs -}}
{{- $parts = append $parts (printf "%d" (int .nodeSubnetPrefix)) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/* The cluster CIDRs in the master's CIDR=LEN[,CIDR=LEN] form. */}}
{{- define "skein.clusterCIDR" -}}
{{- $parts := list -}}
{{- range .Values.network.clusterCIDRs -}}
{{- $parts = append $parts (printf "%s=%d" .cidr (int .nodeSubnetPrefix)) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/* The TLS server name agents check. */}}
{{- define "skein.tls.serverName" -}}
{{- .Values.tls.serverName | default (printf "%s.%s.svc" (include "skein.master.name" .) (include "skein.namespace" .)) -}}
{{- end -}}

{{/*
The conflist the agent writes to <confDir>/10-skein.conflist once it can network, on a node
with the reference plugins of Debian 12 / Ubuntu (containernetworking-plugins 1.1.x: CNI up
to 1.0.0; with plugins >= 1.5 `cniVersions` also lists 1.1.0); kept in the ConfigMap so an
operator can read what the nodes get. install/tests checks that it is what `skein-agent
install-cni` writes with those plugins and that skein_cni::ConfList parses it.
*/}}
{{- define "skein.conflist" -}}
{
  "cniVersion": "1.0.0",
  "cniVersions": ["0.4.0", "1.0.0"],
  "name": "skein",
  "plugins": [
    {"type": "skein-cni", "agentSocket": {{ printf "%s/cni.sock" .Values.agent.stateDir | toJson }}, "timeoutSeconds": 150},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}
{{- end -}}
