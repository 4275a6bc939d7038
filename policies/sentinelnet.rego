# SentinelNet provisioning policy for Agent Manager (Rego v1).
#
# The SAME rules as the in-process evaluator, services/provisioner/policy.ts (evaluateLocalPolicy):
# change both together. Fails closed: a missing configuration or a malformed input is a deny with
# a reason.
#
# Data: policies/local-policy.json mounted at data.agentmanager.config, e.g.
#   opa run --server agentmanager.config:policies/local-policy.json policies/sentinelnet.rego
# Query: POST /v1/data/agentmanager/provisioning with
#   {"input": {"agent": {"id", "action", "requestedBy"}, "spec": {"image", "gpuCount", "gpuType",
#    "cpu", "memoryMb"}, "division", "region", "usage": {"gpus"}}}
# Answer: {"result": {"allow": bool, "reasons": [string, ...]}} (reasons sorted; helpers are
# functions, so they do not appear in the result).
package agentmanager.provisioning

default allow := false

allow if count(reasons) == 0

# --- configuration and input shape (fail closed) ------------------------------------------------
# `not f(input.x)` is undefined, not true, when input.x is missing (OPA hoists the argument out of
# the negation), so presence is tested with a comprehension, which is [] rather than undefined.

reasons contains "policy configuration is missing or invalid" if count([1 | valid_config(data.agentmanager.config)]) == 0

reasons contains "spec.image must be a non-empty image reference" if count([1 | image_ref(input.spec.image)]) == 0

reasons contains "spec.gpuCount must be a non-negative integer" if count([1 | is_count(input.spec.gpuCount)]) == 0

reasons contains "spec.cpu must be a positive number" if count([1 | is_positive(input.spec.cpu)]) == 0

reasons contains "spec.memoryMb must be a positive integer" if count([1 | is_positive_integer(input.spec.memoryMb)]) == 0

reasons contains "division must be a non-empty string" if count([1 | is_non_empty_string(input.division)]) == 0

reasons contains "usage.gpus must be a non-negative integer" if count([1 | is_count(input.usage.gpus)]) == 0

# --- image registries --------------------------------------------------------------------------

reasons contains sprintf("image %s is not from an allowed registry", [input.spec.image]) if {
	ref := image_ref(input.spec.image)
	valid_config(data.agentmanager.config)
	not registry_allowed(ref)
}

# --- per-agent limits --------------------------------------------------------------------------

reasons contains sprintf("cpu %v exceeds the maximum of %v", [input.spec.cpu, data.agentmanager.config.maxCpu]) if {
	is_positive(input.spec.cpu)
	input.spec.cpu > data.agentmanager.config.maxCpu
}

reasons contains sprintf("memoryMb %v exceeds the maximum of %v", [input.spec.memoryMb, data.agentmanager.config.maxMemoryMb]) if {
	is_positive_integer(input.spec.memoryMb)
	input.spec.memoryMb > data.agentmanager.config.maxMemoryMb
}

# --- GPU quota per division --------------------------------------------------------------------

reasons contains msg if {
	is_count(input.spec.gpuCount)
	input.spec.gpuCount > 0
	is_count(input.usage.gpus)
	is_non_empty_string(input.division)
	quota := object.get(data.agentmanager.config.gpuQuotaByDivision, input.division, data.agentmanager.config.defaultGpuQuota)
	input.usage.gpus + input.spec.gpuCount > quota
	msg := sprintf(
		"division %s GPU quota exceeded: %v in use + %v requested > quota %v",
		[input.division, input.usage.gpus, input.spec.gpuCount, quota],
	)
}

# --- helpers (functions only, so the Data API result stays {allow, reasons}) -------------------

valid_config(config) if {
	is_array(config.allowedRegistries)
	every entry in config.allowedRegistries {
		is_string(entry)
	}
	is_object(config.gpuQuotaByDivision)
	every quota in config.gpuQuotaByDivision {
		is_count(quota)
	}
	is_count(config.defaultGpuQuota)
	is_positive(config.maxCpu)
	is_positive_integer(config.maxMemoryMb)
}

is_count(x) if {
	is_number(x)
	x >= 0
	floor(x) == x
}

is_positive(x) if {
	is_number(x)
	x > 0
}

is_positive_integer(x) if {
	is_positive(x)
	floor(x) == x
}

is_non_empty_string(s) if {
	is_string(s)
	s != ""
}

host_like(segment) if contains(segment, ".")

host_like(segment) if contains(segment, ":")

host_like(segment) if segment == "localhost"

explicit_registry(parts) if {
	count(parts) > 1
	host_like(parts[0])
}

# [registry, rest]: the first segment is a registry when it looks like a host, else docker.io.
split_registry(name) := [lower(parts[0]), concat("/", array.slice(parts, 1, count(parts)))] if {
	parts := split(name, "/")
	explicit_registry(parts)
}

split_registry(name) := ["docker.io", name] if {
	not explicit_registry(split(name, "/"))
}

with_library(registry, path) := concat("/", ["library", path]) if {
	registry == "docker.io"
	not contains(path, "/")
}

with_library(registry, path) := path if {
	not docker_hub_single_name(registry, path)
}

docker_hub_single_name(registry, path) if {
	registry == "docker.io"
	not contains(path, "/")
}

# {"registry", "repository"} of an image reference; undefined when it is malformed.
image_ref(image) := {"registry": registry, "repository": repository} if {
	is_string(image)
	regex.match(`^[\x21-\x3f\x41-\x7e]+(@[\x21-\x3f\x41-\x7e]+)?$`, image)
	name := split(image, "@")[0]
	[registry, rest] := split_registry(name)
	regex.match(`^[^/:]+(/[^/:]+)*(:[^/:]+)?$`, rest)
	path := split(rest, ":")[0]
	repository := with_library(registry, path)
}

# An entry allows its registry (or registry path) and everything below it, whole segments only.
registry_allowed(ref) if {
	some entry in data.agentmanager.config.allowedRegistries
	startswith(concat("/", [ref.registry, ref.repository, ""]), concat("", [trim_right(lower(entry), "/"), "/"]))
}
