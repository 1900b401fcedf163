#!/usr/bin/env bash
# Build the test bed toolchain from Go modules into a per-version cache.
#
#   scripts/toolchain/build.sh [component ...]     (default: all)
#
# Components: pulumi, pulumi-language-python, pulumi-kubernetes, kubernetes, kubernetes-node,
# kine, kwok, crds, actionlint, seaweedfs, traefik, kafka. Each one is skipped when its
# outputs already exist. Prints one line per step with the time it took. Only the Go module
# proxy is needed, and for `kafka` (jars, no build) Maven Central through `mvn`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${PREVIEW_ENV_CACHE:-$HOME/.cache/preview-env-testbed}"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
mkdir -p "$CACHE"

log() { printf '[toolchain] %s\n' "$*" >&2; }

# step NAME OUTPUT -- CMD...: run CMD unless OUTPUT exists; report the time taken.
step() {
  local name="$1" output="$2"; shift 3
  if [[ -e "$output" ]]; then log "$name: cached ($output)"; return 0; fi
  local start=$SECONDS
  log "$name: building..."
  local tmp; tmp="$(mktemp -d "$CACHE/.build-XXXXXX")"
  # Not in an `if`: errexit must stay active inside the build function.
  local rc=0
  set +e
  ( set -e; cd "$tmp"; "$@" ) >"$tmp.log" 2>&1
  rc=$?
  set -e
  if [[ $rc -ne 0 ]]; then
    log "$name: FAILED after $((SECONDS - start))s; last lines of $tmp.log:"
    tail -n 40 "$tmp.log" >&2
    return 1
  fi
  rm -rf "$tmp" "$tmp.log"
  log "$name: built in $((SECONDS - start))s"
}

# module_info FIELD MODULE VERSION: a field of `go mod download -json` (GoMod, Dir, Zip).
module_info() {
  go mod download -json "$2@$3" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"
}
gomod_file() { module_info GoMod "$1" "$2"; }
gomod_dir() { module_info Dir "$1" "$2"; }

# copy_replaces GO_MOD: append a dependency's non-local replace directives to ./go.mod
# (a dependency's own replaces are ignored by Go, but its build needs them).
copy_replaces() {
  python3 - "$1" >>go.mod <<'PY'
import re, sys
text = open(sys.argv[1]).read()
lines = []
for block in re.findall(r"^replace\s*\((.*?)^\)", text, re.S | re.M):
    lines += block.strip().splitlines()
lines += re.findall(r"^replace\s+([^(].*)$", text, re.M)
for line in lines:
    line = line.split("//")[0].strip()
    if line and "=>" in line and not line.split("=>")[1].strip().startswith("."):
        print("replace " + line)
PY
}

# ---------------------------------------------------------------- pulumi CLI
build_pulumi() {
  local out="$CACHE/pulumi-$PULUMI_VERSION/bin"
  mkdir -p "$out"
  go mod init preview-env/pulumi-cli >/dev/null 2>&1
  # pkg/v3's non-local replaces (the clipboard fork) must come into the wrapper.
  local pkgmod; pkgmod="$(gomod_file github.com/pulumi/pulumi/pkg/v3 "$PULUMI_VERSION")"
  copy_replaces "$pkgmod"
  go mod edit -require="github.com/pulumi/pulumi/sdk/v3@$PULUMI_VERSION" \
              -require="github.com/pulumi/pulumi/pkg/v3@$PULUMI_VERSION"
  go get "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@$PULUMI_VERSION"
  go build -trimpath -tags osusergo,grpcnotrace \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
    -o "$out/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
  mv "$out/pulumi.tmp" "$out/pulumi"
}

# --------------------------------------------------- pulumi-language-python
build_pulumi_language_python() {
  local out="$CACHE/pulumi-$PULUMI_VERSION/bin"
  mkdir -p "$out"
  # The upstream host module (sdk/python/cmd/pulumi-language-python/v3) is not on the Go proxy:
  # build our minimal host from language-python/ (see its README.md) against sdk/v3.
  cp "$HERE"/language-python/* .
  go mod edit -require="github.com/pulumi/pulumi/sdk/v3@$PULUMI_VERSION"
  go mod tidy  # no-op unless PULUMI_VERSION moved away from the committed go.mod
  go build -trimpath -ldflags "-s -w" -o "$out/pulumi-language-python.tmp" .
  # The exec shim ships in the sdk/v3 module zip under python/cmd/.
  local sdkdir; sdkdir="$(gomod_dir github.com/pulumi/pulumi/sdk/v3 "$PULUMI_VERSION")"
  install -m 0755 "$sdkdir/python/cmd/pulumi-language-python-exec" "$out/pulumi-language-python-exec"
  mv "$out/pulumi-language-python.tmp" "$out/pulumi-language-python"
}

# ------------------------------------------------- pulumi-resource-kubernetes
build_pulumi_kubernetes() {
  local out="$CACHE/pulumi-kubernetes-$PULUMI_KUBERNETES_VERSION/bin"
  mkdir -p "$out"
  local mod=github.com/pulumi/pulumi-kubernetes/provider/v4
  local dir; dir="$(gomod_dir "$mod" "$PULUMI_KUBERNETES_MODULE_VERSION")"
  local modfile; modfile="$(gomod_file "$mod" "$PULUMI_KUBERNETES_MODULE_VERSION")"
  # main.go embeds a generated schema-embed.json that is not in the module zip: build a
  # wrapper main that embeds the committed schema.json (version set) and calls Serve.
  go mod init preview-env/pulumi-resource-kubernetes >/dev/null 2>&1
  copy_replaces "$modfile"
  # What the upstream go:generate step does: versioned schema, minified terraform mapping.
  python3 - "$dir/cmd/pulumi-resource-kubernetes" "$PULUMI_KUBERNETES_VERSION" <<'PY'
import json, sys
src = sys.argv[1]
schema = json.load(open(f"{src}/schema.json"))
schema["version"] = sys.argv[2]
json.dump(schema, open("schema-embed.json", "w"), separators=(",", ":"))
mapping = json.load(open(f"{src}/terraform-mapping.json"))
json.dump(mapping, open("terraform-mapping-embed.json", "w"), separators=(",", ":"))
PY
  cp "$dir/cmd/pulumi-resource-kubernetes/main.go" main.go
  chmod -R u+w .
  go mod edit -require="$mod@$PULUMI_KUBERNETES_MODULE_VERSION"
  go mod tidy
  go build -trimpath \
    -ldflags "-s -w -X $mod/pkg/version.Version=$PULUMI_KUBERNETES_VERSION" \
    -o "$out/pulumi-resource-kubernetes" .
}

# ------------------------------------------------------- Kubernetes binaries
# kubernetes_wrapper PKG...: a wrapper module in . that requires k8s.io/kubernetes and
# imports PKG... (so `go mod tidy` keeps what they need).
kubernetes_wrapper() {
  local staging="v0${KUBERNETES_VERSION#v1}"
  go mod init preview-env/kubernetes >/dev/null 2>&1
  go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
  # Kubernetes requires its staging modules at v0.0.0 with local replaces; point each at
  # its published version (list derived from the release's go.mod).
  local kmod; kmod="$(gomod_file k8s.io/kubernetes "$KUBERNETES_VERSION")"
  local m
  for m in $(sed -n 's#^\s*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$kmod"); do
    go mod edit -replace="$m=$m@$staging"
  done
  { printf 'package tools\n\nimport (\n'; printf '\t_ "%s"\n' "$@"; printf ')\n'; } > tools.go
  go mod tidy
}

kubernetes_ldflags() {
  local major="${KUBERNETES_VERSION#v}"; major="${major%%.*}"
  local minor="${KUBERNETES_VERSION#v*.}"; minor="${minor%%.*}"
  local ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  printf '%s' "$ld"
}

build_kubernetes() {
  local out="$CACHE/kubernetes-$KUBERNETES_VERSION/bin"
  mkdir -p "$out"
  kubernetes_wrapper k8s.io/kubernetes/cmd/kube-apiserver/app \
    k8s.io/kubernetes/cmd/kube-controller-manager/app \
    k8s.io/kubernetes/cmd/kube-scheduler/app k8s.io/kubectl/pkg/cmd
  go build -trimpath -ldflags "$(kubernetes_ldflags)" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

# kubelet and kube-proxy for the bed's one real node: same module and wrapper as the
# control plane, a cache dir of their own so a cached control-plane build is never redone.
build_kubernetes_node() {
  local out="$CACHE/kubernetes-node-$KUBERNETES_VERSION/bin"
  mkdir -p "$out"
  kubernetes_wrapper "k8s.io/kubernetes/cmd/kubelet/app" "k8s.io/kubernetes/cmd/kube-proxy/app"
  go build -trimpath -ldflags "$(kubernetes_ldflags)" -o "$out/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

build_kine() {
  GOBIN="$CACHE/kine-$KINE_VERSION/bin" go install "github.com/k3s-io/kine@$KINE_VERSION"
}

build_kwok() {
  local out="$CACHE/kwok-$KWOK_VERSION"
  GOBIN="$out/bin" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  local dir; dir="$(gomod_dir sigs.k8s.io/kwok "$KWOK_VERSION")"
  mkdir -p "$out/stages"
  cp -r "$dir/kustomize/stage/." "$out/stages/"
  chmod -R u+w "$out/stages"
}

# extract_from_module MODULE VERSION PREFIX DEST: copy the files under PREFIX of a module's
# zip into DEST. Reads the zip directly, so the module's own `go` directive does not matter
# (argo-rollouts v1.10.2 asks for a newer Go than we build with).
extract_from_module() {
  local zip
  zip="$({ go mod download -json "$1@$2" || true; } | python3 -c 'import json,sys; print(json.load(sys.stdin)["Zip"])')"
  python3 - "$zip" "$1@$2/$3" "$4" <<'PY'
import os, sys, zipfile
archive, prefix, dest = sys.argv[1:]
found = 0
with zipfile.ZipFile(archive) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/") and "/" not in name[len(prefix):].lstrip("/"):
            target = os.path.join(dest, os.path.basename(name))
            with open(target, "wb") as out:
                out.write(zf.read(name))
            found += 1
if not found:
    sys.exit(f"nothing under {prefix} in {archive}")
PY
}

build_crds() {
  local out="$CACHE/crds-gateway-$GATEWAY_API_VERSION-rollouts-$ARGO_ROLLOUTS_VERSION"
  rm -rf "$out" "$out.tmp"
  mkdir -p "$out.tmp" "$out.tmp.rollouts"
  extract_from_module sigs.k8s.io/gateway-api "$GATEWAY_API_VERSION" config/crd/standard "$out.tmp"
  extract_from_module github.com/argoproj/argo-rollouts "$ARGO_ROLLOUTS_VERSION" manifests/crds "$out.tmp.rollouts"
  mv "$out.tmp.rollouts/rollout-crd.yaml" "$out.tmp/argo-rollouts-rollout-crd.yaml"
  rm -rf "$out.tmp.rollouts" "$out.tmp/kustomization.yaml"
  mv "$out.tmp" "$out"
}

build_actionlint() {
  GOBIN="$CACHE/actionlint-$ACTIONLINT_VERSION/bin" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
}

# SeaweedFS: a real S3-compatible server (Apache-2.0) for the s3:// backend tests. A wrapper
# module, because its go.mod carries one non-local replace that a plain `go install` ignores.
build_seaweedfs() {
  local out="$CACHE/seaweedfs-$SEAWEEDFS_VERSION/bin"
  mkdir -p "$out"
  local mod=github.com/seaweedfs/seaweedfs
  go mod init preview-env/seaweedfs >/dev/null 2>&1
  copy_replaces "$(gomod_file "$mod" "$SEAWEEDFS_MODULE_VERSION")"
  go mod edit -require="$mod@$SEAWEEDFS_MODULE_VERSION"
  go get "$mod/weed@$SEAWEEDFS_MODULE_VERSION"  # every dependency of the main package
  go build -trimpath -ldflags "-s -w" -o "$out/weed" "$mod/weed"
}

# Traefik: the bed's Gateway API data plane. Its go.mod has replace directives, so
# `go install ...@version` refuses: build inside a writable copy of the module instead.
build_traefik() {
  local out="$CACHE/traefik-$TRAEFIK_VERSION/bin"
  mkdir -p "$out"
  local dir; dir="$(gomod_dir github.com/traefik/traefik/v3 "$TRAEFIK_VERSION")"
  cp -r "$dir/." src
  chmod -R u+w src
  cd src
  go build -trimpath \
    -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
    -o "$out/traefik.tmp" ./cmd/traefik
  mv "$out/traefik.tmp" "$out/traefik"
}

# Kafka (the bed's broker, testbed/brokers.py): kafka_2.13 and its runtime dependencies,
# downloaded by Maven from Maven Central into a throwaway local repository (strict
# checksums: each file must match the .sha1 Maven Central serves beside it), checked again
# here against those .sha1 files, then copied flat into one classpath directory. Nothing
# is compiled; Debian's Java runs it.
build_kafka() {
  local out="$CACHE/kafka-$KAFKA_VERSION"
  cat >pom.xml <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.preview-env.testbed</groupId>
  <artifactId>kafka-classpath</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>$KAFKA_SLF4J_SIMPLE_VERSION</version></dependency>
  </dependencies>
</project>
POM
  mvn -B -q --strict-checksums -Dmaven.repo.local="$PWD/repository" \
    "org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN_VERSION:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$PWD/libs"
  python3 - "$PWD/repository" "$PWD/libs" "$KAFKA_VERSION" <<'PY'
import hashlib, pathlib, sys
repo, libs, version = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
def sha1(path):
    return hashlib.sha1(path.read_bytes()).hexdigest()
published = {}
for jar in repo.rglob("*.jar"):
    listed = jar.with_name(jar.name + ".sha1")
    if not listed.exists():
        sys.exit(f"no .sha1 from Maven Central beside {jar}")
    expected = listed.read_text().split()[0].lower()
    if sha1(jar) != expected:
        sys.exit(f"{jar.name}: sha1 {sha1(jar)} is not Maven Central's {expected}")
    published[jar.name] = expected
lines = []
for jar in sorted(libs.glob("*.jar")):
    if published.get(jar.name) != sha1(jar):
        sys.exit(f"{jar.name} was not downloaded with a matching .sha1")
    lines.append(f"{published[jar.name]}  {jar.name}\n")
if not (libs / f"kafka_2.13-{version}.jar").exists():
    sys.exit(f"kafka_2.13-{version}.jar missing from the classpath")
(libs / "SHA1SUMS").write_text("".join(lines))
PY
  rm -rf "$out"
  mkdir -p "$out"
  mv libs "$out/libs"
}

ALL=(kine kwok crds pulumi pulumi-kubernetes kubernetes kubernetes-node pulumi-language-python actionlint seaweedfs traefik kafka)
components=("$@"); [[ ${#components[@]} -eq 0 ]] && components=("${ALL[@]}")
total=$SECONDS
for c in "${components[@]}"; do
  case "$c" in
    pulumi) step pulumi "$CACHE/pulumi-$PULUMI_VERSION/bin/pulumi" -- build_pulumi ;;
    pulumi-language-python) step pulumi-language-python "$CACHE/pulumi-$PULUMI_VERSION/bin/pulumi-language-python" -- build_pulumi_language_python ;;
    pulumi-kubernetes) step pulumi-kubernetes "$CACHE/pulumi-kubernetes-$PULUMI_KUBERNETES_VERSION/bin/pulumi-resource-kubernetes" -- build_pulumi_kubernetes ;;
    kubernetes) step kubernetes "$CACHE/kubernetes-$KUBERNETES_VERSION/bin/kubectl" -- build_kubernetes ;;
    kubernetes-node) step kubernetes-node "$CACHE/kubernetes-node-$KUBERNETES_VERSION/bin/kube-proxy" -- build_kubernetes_node ;;
    kine) step kine "$CACHE/kine-$KINE_VERSION/bin/kine" -- build_kine ;;
    kwok) step kwok "$CACHE/kwok-$KWOK_VERSION/stages" -- build_kwok ;;
    crds) step crds "$CACHE/crds-gateway-$GATEWAY_API_VERSION-rollouts-$ARGO_ROLLOUTS_VERSION/argo-rollouts-rollout-crd.yaml" -- build_crds ;;
    seaweedfs) step seaweedfs "$CACHE/seaweedfs-$SEAWEEDFS_VERSION/bin/weed" -- build_seaweedfs ;;
    traefik) step traefik "$CACHE/traefik-$TRAEFIK_VERSION/bin/traefik" -- build_traefik ;;
    kafka) step kafka "$CACHE/kafka-$KAFKA_VERSION/libs/kafka_2.13-$KAFKA_VERSION.jar" -- build_kafka ;;
    actionlint) step actionlint "$CACHE/actionlint-$ACTIONLINT_VERSION/bin/actionlint" -- build_actionlint ;;
    *) log "unknown component: $c (known: ${ALL[*]})"; exit 2 ;;
  esac
done
log "toolchain ready in $((SECONDS - total))s under $CACHE"
