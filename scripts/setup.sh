#!/usr/bin/env bash
# Set up kata-py on a fresh Debian 12 (as root) and run a container in a micro-VM:
#   apt packages → .venv with kata-py → guest image (cached) → `kata-py check`
#   → `kata-py run` of a busybox bundle, which prints the *guest's* kernel.
# Every step is skipped when already done. `--no-run` stops before the boot.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ca-certificates qemu-system-x86 qemu-system-common python3 python3-venv python3-dev
              busybox-static cpio e2fsprogs binutils file zstd lz4 xz-utils iproute2 procps
              # setpriv: the sandbox's daemons die with their monitor (Essential, listed for clarity)
              util-linux
              # the podman end-to-end tests and benchmarks
              podman conmon netavark aardvark-dns iptables iperf3 mmdebstrap
              # the other OCI tools the end-to-end tests drive kata-py with
              skopeo umoci buildah
              # containerd runs kata-py through its shim v2 (containerd-shim-kata-py-v2)
              containerd
              # the benchmarks' baselines, beside kata-py in the same run; runc is
              # also what the tests compare `kata-py spec` and runc-spec bundles with
              runc crun)

step() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "kata-py setup: run as root (it installs packages and starts VMs)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

stamp=.venv/.kata-py-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "creating .venv with kata-py and its dev tools"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# The command engines call: containers.conf's [engine.runtimes] names
# /usr/local/bin/kata-py first (configs/containers.conf.d/kata-py.conf). It
# is an ordinary install of this checkout in /opt/kata-py, not the editable
# .venv, whose import hook costs ~11 ms per call (`state` must answer in
# < 30 ms). Reinstalled when the runtime's sources change. A link there is
# left alone unless it is a symlink (another install's) or missing.
runtime_want=$(find kata_py agent hypervisor pyproject.toml -type f \
  \( -name '*.py' -o -name '*.proto' -o -name pyproject.toml \) -print0 | sort -z \
  | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ "$(cat /opt/kata-py/.installed 2>/dev/null)" != "$runtime_want" ]; then
  step "installing kata-py into /opt/kata-py (the command engines call)"
  [ -x /opt/kata-py/bin/python ] || python3 -m venv /opt/kata-py
  /opt/kata-py/bin/pip install -q --upgrade --force-reinstall --no-deps .
  /opt/kata-py/bin/pip install -q .
  echo "$runtime_want" > /opt/kata-py/.installed
fi
# pip's wrapper imports re and runs site (~9 ms of a 30 ms budget): this one
# starts Python with -S and the package's directory on sys.path; the full CLI
# runs site itself (kata_py/fastcli.py). Written every time: pip rewrites it.
purelib=$(/opt/kata-py/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' '#!/opt/kata-py/bin/python3 -S' 'import sys' \
  "sys.path.append(\"$purelib\")" 'from kata_py.fastcli import main' 'sys.exit(main())' \
  > /opt/kata-py/bin/kata-py.new
mv /opt/kata-py/bin/kata-py.new /opt/kata-py/bin/kata-py
chmod 755 /opt/kata-py/bin/kata-py
if [ ! -e /usr/local/bin/kata-py ] || [ -L /usr/local/bin/kata-py ]; then
  ln -sfn /opt/kata-py/bin/kata-py /usr/local/bin/kata-py
fi
# containerd finds its shim on PATH by the runtime's name (io.containerd.kata-py.v2)
if [ ! -e /usr/local/bin/containerd-shim-kata-py-v2 ] || [ -L /usr/local/bin/containerd-shim-kata-py-v2 ]; then
  ln -sfn /opt/kata-py/bin/containerd-shim-kata-py-v2 /usr/local/bin/containerd-shim-kata-py-v2
fi

# /dev/fuse for the guest-stats view over each container's host cgroup
# (kata_py/statsview.py) and the holder's /proc (kata_py/procview.py);
# without it kata-py runs and the views are skipped.
if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || echo "kata-py setup: no /dev/fuse: podman stats will show the VM's host processes and podman top none" >&2
fi

step "guest image"
.venv/bin/python guest-image/build.py

if [ "${1:-}" != "--no-run" ]; then
  step "checking the host"
  .venv/bin/kata-py check
  bundle=/var/cache/kata-py/demo-bundle
  .venv/bin/python scripts/make-bundle.py "$bundle" sh -c \
    'echo "hello from container $(hostname), kernel $(uname -r) (host: '"$(uname -r)"')"'
  step "running a container in a micro-VM"
  .venv/bin/kata-py run -b "$bundle" "setup-demo-$$"
fi
