#!/usr/bin/env bash
# generate.sh [OUT] compiles every .proto under api/ with protoc (Debian's
# protobuf-compiler), protoc-gen-go and protoc-gen-go-ttrpc (pinned, built into
# the provisioning cache). Output goes next to each .proto, or beneath OUT
# (mirroring the tree) when given — the staleness test uses that.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${DPU_OFFLOAD_CACHE:-/var/cache/dpu-offload}
export PATH=$CACHE/bin:$PATH
out=${1:-.}
mkdir -p "$out"
mapfile -t protos < <(find api -name '*.proto' | sort)
[ ${#protos[@]} -gt 0 ] || exit 0
for tool in protoc protoc-gen-go protoc-gen-go-ttrpc; do
	command -v "$tool" >/dev/null || { echo "generate: $tool not found (run tests/testbed/provision)" >&2; exit 1; }
done
# One protoc call per directory, so each Go package is generated as a unit.
for dir in $(printf '%s\n' "${protos[@]}" | xargs -n1 dirname | sort -u); do
	protoc -I . -I /usr/include \
		--go_out="$out" --go_opt=paths=source_relative \
		--go-ttrpc_out="$out" --go-ttrpc_opt=paths=source_relative \
		"$dir"/*.proto
done
