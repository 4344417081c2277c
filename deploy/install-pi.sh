#!/usr/bin/env bash
# Install ax-llm-provider as a systemd service on a Raspberry Pi 5 (Ubuntu 24.04, arm64) with an
# LLM-8850 (AX650N) M.2 card: AXCL host runtime (axclhost + dkms), the vendor's pyaxcl and pyaxengine
# wheels, a venv with ax-llm-provider, CPU governor "performance", and one unit: the installation app
# (ax-llm.service, the default) or, with --serve, Ollama's REST API (ax-llm-serve.service).
#
# UNTESTED ON HARDWARE: written from the vendor guides and docs/sdk-notes.md; `--dry-run` prints every
# step without running it. Run as root:
#
#   sudo deploy/install-pi.sh \
#     --pyaxcl-wheel-url https://github.com/AXERA-TECH/pyaxcl/releases/download/<tag>/<pyAXCL wheel> \
#     --pyaxengine-wheel-url https://github.com/AXERA-TECH/pyaxengine/releases/download/<tag>/<axengine wheel> \
#     --axcl-deb /path/or/url/to/axclhost_<version>_arm64.deb \
#     --model qwen2.5:0.5b --source dir:/var/lib/ax-llm/inbox
#
#   sudo deploy/install-pi.sh --pyaxcl-wheel-url ... --axcl-deb ... --serve --model qwen2.5:0.5b
#
# Options:
#   --pyaxcl-wheel-url URL      pyAXCL wheel (GitHub release asset of AXERA-TECH/pyaxcl); required
#   --pyaxengine-wheel-url URL  pyaxengine wheel (AXERA-TECH/pyaxengine releases); optional fallback backend
#   --axcl-deb PATH|URL         the axclhost .deb; without it `apt-get install axclhost` from a configured repo
#   --axcl-apt-source LINE      an apt source line for the vendor repository (written to sources.list.d)
#   --prefix DIR                install root (default /opt/ax-llm)
#   --model NAME                model the service preloads (default smollm2:135m)
#   --source SRC                stdin | dir:PATH (default dir:/var/lib/ax-llm/inbox); the installation app only
#   --serve                     install ax-llm-serve.service (`ax-llm serve` on 127.0.0.1:11434, settings in
#                               /etc/default/ax-llm-serve) instead of the installation app's ax-llm.service
#   --no-start                  enable the unit but do not start it
#   --skip-checks               do not insist on Ubuntu 24.04 / arm64 / a Pi 5 (for --dry-run elsewhere)
#   --dry-run                   print the commands instead of running them
set -euo pipefail

PREFIX=/opt/ax-llm
MODEL=smollm2:135m
SOURCE=dir:/var/lib/ax-llm/inbox
PYAXCL_URL=""
PYAXENGINE_URL=""
AXCL_DEB=""
AXCL_APT_SOURCE=""
START=1
SERVE=0
CHECKS=1
DRY_RUN=0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+ %s\n' "$*" >&2
    else
        "$@"
    fi
}

# write CONTENT to FILE (mode 0644), or show it in a dry run
write_file() {
    local file=$1 content=$2
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+ write %s:\n%s\n' "$file" "$content" >&2
    else
        printf '%s\n' "$content" > "$file"
        chmod 0644 "$file"
    fi
}

# fetch URL-or-path into the work dir keeping the file name (pip needs a wheel's real name); prints the path
fetch() {
    local what=$1 name
    name="$(basename "${what%%\?*}")"
    if [[ $what =~ ^https?:// ]]; then
        run curl -fL --retry 3 --connect-timeout 20 -o "$WORK/$name" "$what"
        printf '%s\n' "$WORK/$name"
    else
        [[ -f $what || $DRY_RUN -eq 1 ]] || die "$what does not exist"
        printf '%s\n' "$what"
    fi
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --pyaxcl-wheel-url) PYAXCL_URL=$2; shift 2 ;;
        --pyaxengine-wheel-url) PYAXENGINE_URL=$2; shift 2 ;;
        --axcl-deb) AXCL_DEB=$2; shift 2 ;;
        --axcl-apt-source) AXCL_APT_SOURCE=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --source) SOURCE=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        --serve) SERVE=1; shift ;;
        --skip-checks) CHECKS=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[[ -n $PYAXCL_URL ]] || die "--pyaxcl-wheel-url is required (the pyAXCL wheel from the AXERA-TECH/pyaxcl releases)"
[[ $PYAXCL_URL == *.whl* ]] || die "--pyaxcl-wheel-url must point at a .whl file"
[[ -z $PYAXENGINE_URL || $PYAXENGINE_URL == *.whl* ]] || die "--pyaxengine-wheel-url must point at a .whl file"
[[ $SOURCE == stdin || $SOURCE == dir:/* ]] || die "--source must be stdin or dir:/absolute/path"
# the unit to install, and the other one (both own the card: only one may run)
if [[ $SERVE -eq 1 ]]; then
    UNIT=ax-llm-serve OTHER=ax-llm EXTRAS=langchain,cpu,server
else
    UNIT=ax-llm OTHER=ax-llm-serve EXTRAS=langchain,cpu
fi

# ---- 1. preflight ------------------------------------------------------------------------------------
say "checking the machine"
if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    die "run as root (sudo $0 ...)"
fi
if [[ $CHECKS -eq 1 ]]; then
    # shellcheck source=/dev/null
    . /etc/os-release
    [[ ${ID:-} == ubuntu && ${VERSION_ID:-} == 24.04 ]] || die "this script targets Ubuntu 24.04 (found ${PRETTY_NAME:-unknown}); --skip-checks to go on"
    [[ $(uname -m) == aarch64 ]] || die "this script targets arm64 (found $(uname -m)); --skip-checks to go on"
    if ! tr -d '\0' < /proc/device-tree/model 2>/dev/null | grep -q "Raspberry Pi 5"; then
        warn "this does not look like a Raspberry Pi 5"
    fi
fi

# ---- 2. system packages -------------------------------------------------------------------------------
say "installing system packages"
export DEBIAN_FRONTEND=noninteractive
run apt-get update
run apt-get install -y python3 python3-venv python3-dev build-essential dkms curl pciutils
if ! run apt-get install -y "linux-headers-$(uname -r)"; then
    warn "linux-headers-$(uname -r) not found; trying linux-headers-raspi (needed to build the AXCL driver)"
    run apt-get install -y linux-headers-raspi
fi

# ---- 3. AXCL host runtime (driver + libraries + axcl-smi) ---------------------------------------------
say "installing the AXCL host runtime (axclhost)"
if [[ -n $AXCL_APT_SOURCE ]]; then
    write_file /etc/apt/sources.list.d/axcl.list "$AXCL_APT_SOURCE"
    run apt-get update
fi
if [[ -n $AXCL_DEB ]]; then
    deb="$(fetch "$AXCL_DEB")"
    run apt-get install -y "$deb"
else
    run apt-get install -y axclhost || die "axclhost is not in any configured apt repository: pass --axcl-deb or --axcl-apt-source (M5Stack LLM-8850 guide)"
fi
# after a kernel upgrade the module must be rebuilt: docs/hardware.md, docs/sdk-notes.md ("Field lessons")
run dkms autoinstall -k "$(uname -r)" || warn "dkms autoinstall failed; the axcl_host module may be missing"
run modprobe axcl_host || warn "modprobe axcl_host failed: check the card's power supply and seating"
if [[ $DRY_RUN -eq 0 ]]; then
    lspci | grep -Eiq "axera|0650" || warn "no Axera device on PCIe (lspci): reseat the card, check power"
    [[ -e /dev/axcl_host ]] || warn "/dev/axcl_host is missing: the AXCL driver is not loaded"
    if command -v axcl-smi >/dev/null; then
        timeout 20 axcl-smi || warn "axcl-smi failed or hung (it can hang: always run it under a timeout)"
    fi
fi

# ---- 4. Python: venv, ax-llm-provider, the vendor wheels -----------------------------------------------
say "creating the venv in $PREFIX/venv"
run install -d -m 0755 "$PREFIX"
run python3 -m venv "$PREFIX/venv"
run "$PREFIX/venv/bin/pip" install --upgrade pip wheel
run "$PREFIX/venv/bin/pip" install "${REPO}[$EXTRAS]"  # cpu: the default model is a CPU twin (onnxruntime)
say "installing the vendor wheels"
wheel="$(fetch "$PYAXCL_URL")"
run "$PREFIX/venv/bin/pip" install "$wheel"
if [[ -n $PYAXENGINE_URL ]]; then
    wheel="$(fetch "$PYAXENGINE_URL")"
    run "$PREFIX/venv/bin/pip" install "${REPO}[axengine]" "$wheel"
fi
run "$PREFIX/venv/bin/python" -c "import axcl; print('pyaxcl', axcl.__file__)"

# ---- 5. the service ----------------------------------------------------------------------------------
say "installing the service $UNIT"
if [[ $SERVE -eq 0 ]]; then
    run install -m 0755 "$HERE/installation_app.py" "$PREFIX/installation_app.py"
    run install -m 0644 "$HERE/installation_io.py" "$PREFIX/installation_io.py"
fi
run install -m 0644 "$HERE/$UNIT.service" "/etc/systemd/system/$UNIT.service"
if [[ $PREFIX != /opt/ax-llm ]]; then
    run sed -i "s#/opt/ax-llm#$PREFIX#g" "/etc/systemd/system/$UNIT.service"
fi
if [[ -f /etc/default/$UNIT ]]; then
    warn "/etc/default/$UNIT exists: keeping it (the new template is $HERE/$UNIT.env)"
else
    write_file "/etc/default/$UNIT" "$(sed -e "s#^AX_LLM_MODEL=.*#AX_LLM_MODEL=$MODEL#" \
                                          -e "s#^AX_LLM_SOURCE=.*#AX_LLM_SOURCE=$SOURCE#" "$HERE/$UNIT.env")"
fi
if [[ $SERVE -eq 0 && $SOURCE == dir:* ]]; then
    run install -d -m 0775 "${SOURCE#dir:}"
fi
run install -d -m 0755 /var/lib/ax-llm
# the card lock: private to the service user (never world-writable: a planted link or file could
# be written through); to let a group of notebook users see the service's lock, give it that group
write_file /etc/tmpfiles.d/ax-llm.conf "d /run/ax-llm 0750 root root -"
run systemd-tmpfiles --create /etc/tmpfiles.d/ax-llm.conf
# CPU governor "performance" at every boot (the host orchestrates every token)
write_file /etc/systemd/system/ax-llm-cpufreq.service "[Unit]
Description=CPU governor performance for ax-llm
Before=ax-llm.service ax-llm-serve.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for g in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do echo performance > \"\$\$g\"; done'
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target"
run systemctl daemon-reload
run systemctl enable --now ax-llm-cpufreq.service
if [[ -f /etc/systemd/system/$OTHER.service ]]; then
    run systemctl disable --now "$OTHER.service"  # Conflicts= stops it at runtime; at boot only one may start
fi
run systemctl enable "$UNIT.service"
if [[ $START -eq 1 ]]; then
    run systemctl restart "$UNIT.service"
fi

say "done"
cat <<EOF
Next:
  * put the model in the store: sudo AX_LLM_MODELS=/var/lib/ax-llm/models $PREFIX/venv/bin/ax-llm pull $MODEL
    (or copy a bundle there; the store is AX_LLM_MODELS in /etc/default/$UNIT)
  * follow it:   journalctl -u $UNIT -f
  * its state:   systemctl status $UNIT        (STATUS= line: serving / paused / rebooting)
  * settings:    /etc/default/$UNIT, then: sudo systemctl restart $UNIT
This script is untested on hardware: check each step's output the first time.
EOF
