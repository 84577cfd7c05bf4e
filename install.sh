#!/usr/bin/env bash
# install.sh: install (or --uninstall) modsec-tools and its fail2ban bundle from this tree.
# Run ./install.sh --help for the manual; docs/install.md explains the choices.
set -euo pipefail

usage() {
    cat <<'EOF'
NAME
    install.sh - install modsec-tools and its fail2ban jails on this server

SYNOPSIS
    ./install.sh [--configure-modsecurity] [--no-deps] [--enable-acl[=GROUP]]
                 [--python PYTHON] [--root DIR]
    ./install.sh --uninstall [--root DIR]
    ./install.sh --help

DESCRIPTION
    Installs modsec-tools from this source tree and wires it to Apache ModSecurity 2.x and
    fail2ban, step by step, printing what each step did. It is idempotent: a second run
    changes nothing and says "unchanged" for every step; files are compared before they are
    written. Everything it writes is listed in the manifest (see FILES), which --uninstall
    uses.

    Steps:
     1. deps      install missing packages (apt-get on Debian/Ubuntu, dnf on RHEL/Rocky):
                  fail2ban, python3 (>= 3.11), python3-venv, python3-pip,
                  python3-pyinotify, python3-pymysql, python3-setuptools,
                  python3-wheel, logrotate (for the rotation step 9 installs), and the firewall
                  tools for the modsec-block action: ipset + nftables when "iptables -V"
                  says nf_tables (or iptables is absent), python3-iptables when it says
                  legacy; acl with --enable-acl.
     2. python    a virtual environment in /opt/modsec-tools (using the distribution's
                  pyinotify and pymysql through --system-site-packages when present, so
                  nothing is downloaded) with this tree pip-installed, and the wrapper
                  /usr/bin/modsec-tools. Reinstalled only when the source changed.
     3. fail2ban  filter.d/, jail.d/ and action.d/ files of this tree into /etc/fail2ban
                  (with action.d/modsec_blocker/, the package the action imports).
                  Your *.local files there are never touched. A bundled *.conf that you
                  edited is saved as FILE.modsec-tools-save before it is replaced.
     4. config    /etc/modsec-tools/modsec-tools.conf, only if absent, with storage_dir and
                  index_log detected from the Apache layout (/etc/apache2 or /etc/httpd) and
                  the ModSecurity configuration (SecAuditLogType, SecAuditLogStorageDir,
                  SecAuditLog), read as Apache reads it: from apache2.conf or
                  conf/httpd.conf through every Include. An existing file is kept; when
                  ModSecurity's directives no longer match it, the run says which line to
                  put in modsec-tools.local. ModSecurity writing Serial logs (the
                  distributions' default) is reported, with what to set.
     5. modsecurity
                  with --configure-modsecurity (an earlier run's drop-in is kept):
                  the audit log settings modsec-tools reads, in a drop-in Apache's
                  ModSecurity configuration includes after its own
                  (/etc/modsecurity/zz-modsec-tools.conf on Debian,
                  /etc/httpd/modsecurity.d/zz-modsec-tools.conf on RHEL):
                  SecAuditEngine RelevantOnly, SecAuditLogParts ABIJFHZ,
                  SecAuditLogType Concurrent, SecAuditLogStorageDir (storage_dir),
                  SecAuditLogDirMode 0750, SecAuditLogFileMode 0640 and SecAuditLog
                  (the index, APACHE_LOG_DIR/modsec_index.log). "apache2ctl -t" must
                  accept it and Apache must read it last, or it is taken back.
                  SecRuleEngine is never touched: it is yours.
     6. dirs      state_dir (/var/lib/modsec-tools, 0750), quarantine_dir (0700), the log
                  directory (/var/log/modsec-tools, 0750), an empty event log (so the jail
                  can start before the first event) and, when Apache is present and it is
                  missing, the storage tree (0750, owned by the Apache user).
     7. acl       with --enable-acl: a POSIX ACL giving GROUP rwx on the storage tree, as
                  access and default ACL (inherited by new subdirectories).
     8. jails     /etc/fail2ban/jail.d/modsec.local enabling the bundle's jails, only if
                  absent (it is yours afterwards).
     9. system    the systemd unit /etc/systemd/system/modsec-tools.service with a drop-in
                  (modsec-tools.service.d/50-install-paths.conf) making the configured paths
                  writable, modsec-tools-fleet.service (not enabled: docs/fleet.md),
                  /etc/logrotate.d/modsec-tools, the manual page, README and
                  docs in /usr/share/doc/modsec-tools with examples/ (the sysctl file,
                  and fail2ban-regex/: sample logs for the filters), and
                  /etc/sysctl.d/60-modsec-tools.conf when fs.inotify.max_user_watches is
                  lower than 524288.
    10. check     "modsec-tools config check", and "fail2ban-client -t" for the bundle's
                  jails, filters and action on their own (every other jail disabled in a
                  copy of /etc/fail2ban), then for the whole configuration: another
                  package's jail that cannot start (Debian 12's sshd, whose auth.log does
                  not exist) is a WARNING with its fix, not a failure. What in Apache's
                  configuration keeps the jails from banning (SecRuleEngine Off, or
                  DetectionOnly with a jail in mode = blocked; Serial logs) is reported
                  (NOT READY when a jail is enabled) and listed at the end with the
                  commands that fix it: it is Apache's configuration, so it is left to you
                  and does not fail the run.
    11. start     if systemd runs: enable and (re)start modsec-tools.service, start or
                  reload fail2ban. Without systemd nothing is started: the exact commands to
                  run are listed at the end. A running fail2ban is reloaded either way.

    At the end, "Still to do" lists what is left to you, in order, each with the
    commands that do it (lines starting with "$").

OPTIONS
    --root DIR
        Stage into DIR instead of / (like DESTDIR): every path above is created under DIR
        and Apache/ModSecurity are detected under DIR. Never runs apt-get, dnf, systemctl,
        sysctl or fail2ban-client, and writes nothing outside DIR (a temporary build
        directory aside). The check step runs "modsec-tools config show" (which validates
        every value) instead of "config check". Used by tests and image builders.

    --configure-modsecurity
        Install the ModSecurity drop-in of step 5 (checked with "apache2ctl -t", taken
        back if Apache refuses it), then restart Apache yourself. Without it, install.sh
        only says what to set. SecRuleEngine is left as it is either way.

    --no-deps
        Do not install packages; fail if a required program is missing.

    --enable-acl[=GROUP]
        The alternative to running the watcher with dir_mode/dir_owner/dir_group for
        Apache MPM ITK: set "setfacl -m g:GROUP:rwx" and "setfacl -d -m g:GROUP:rwx" on
        the storage tree and its existing directories, so every vhost user in GROUP can
        write entries in directories another user created. GROUP defaults to the Apache
        group (www-data, or apache on RHEL). See docs/install.md.

    --python PYTHON
        The interpreter for the virtual environment (default: the first of
        /usr/bin/python3, python3.13, python3.12, python3.11 that is >= 3.11).

    --uninstall
        Stop and remove everything the manifest lists: unit, wrapper, venv, fail2ban
        bundle, logrotate and sysctl files, directories it created if empty. Kept: data
        (/var/lib/modsec-tools, /var/log/modsec-tools, the storage tree), your *.local
        files, and any installed file you modified since (the configuration included).

    -h, --help
        This manual.

FILES
    /var/lib/modsec-tools/install-manifest   what install.sh wrote (TYPE, SHA-256, PATH)
    /opt/modsec-tools                        the virtual environment
    /usr/bin/modsec-tools                    wrapper: runs the venv's interpreter
    /etc/modsec-tools/modsec-tools.conf      settings; put changes in modsec-tools.local

EXIT STATUS
    0 done (what is left to you is listed at the end); 1 a step or a check of ours failed
    (the message says which); 2 usage error.

EXAMPLES
    sudo ./install.sh                          install, detect, start
    sudo ./install.sh --configure-modsecurity  ... and set ModSecurity's audit log up
    sudo ./install.sh --enable-acl=vhosts      ITK: vhost users share the group vhosts
    ./install.sh --root /tmp/stage --no-deps   stage a tree without touching the system
    sudo ./install.sh --uninstall

SEE ALSO
    docs/install.md, modsec-tools(1), fail2ban-client(1), setfacl(1), systemd.exec(5)
EOF
}

# ----------------------------------------------------------------------------- options ----
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=""
NO_DEPS=0
UNINSTALL=0
ENABLE_ACL=0
ACL_GROUP=""
PYTHON=""
CONFIGURE_MODSEC=0

die_usage() { echo "install.sh: $*" >&2; echo "Try: ./install.sh --help" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die_usage "--root needs a directory"; ROOT=$2; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        --no-deps) NO_DEPS=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --enable-acl) ENABLE_ACL=1 ;;
        --enable-acl=*) ENABLE_ACL=1; ACL_GROUP=${1#--enable-acl=} ;;
        --configure-modsecurity) CONFIGURE_MODSEC=1 ;;
        --python) [ $# -ge 2 ] || die_usage "--python needs a path"; PYTHON=$2; shift ;;
        --python=*) PYTHON=${1#--python=} ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown option: $1" ;;
    esac
    shift
done
if [ -n "$ROOT" ]; then
    [ "$ROOT" != / ] || die_usage "--root / is the live system: run without --root"
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or stage with --root DIR)" >&2
    exit 1
fi

export LC_ALL=C
export PYTHONDONTWRITEBYTECODE=1
umask 022

VENV=/opt/modsec-tools
WRAPPER=/usr/bin/modsec-tools
CONFIG_DIR=/etc/modsec-tools
CONFIG=$CONFIG_DIR/modsec-tools.conf
F2B=/etc/fail2ban
JAIL_LOCAL=$F2B/jail.d/modsec.local
UNIT=/etc/systemd/system/modsec-tools.service
FLEET_UNIT=/etc/systemd/system/modsec-tools-fleet.service
DROPIN=/etc/systemd/system/modsec-tools.service.d/50-install-paths.conf
LOGROTATE=/etc/logrotate.d/modsec-tools
SYSCTL=/etc/sysctl.d/60-modsec-tools.conf
MANPAGE=/usr/local/share/man/man1/modsec-tools.1
# Where the manual page points, as in the packages: README, docs, and examples (the sysctl
# file, and fail2ban-regex's sample logs for our filters).
DOCDIR=/usr/share/doc/modsec-tools
DEFAULT_STATE_DIR=/var/lib/modsec-tools
# ModSecurity's storage tree when its configuration names none: outside /var/log/apache2 and
# /var/log/httpd, which Apache's user cannot enter (see check_apache_reaches).
DEFAULT_STORAGE=/var/log/modsec_audit
# ModSecurity's index of complete entries (SecAuditLog in Concurrent mode), in Apache's log
# directory: not modsec_audit.log, where a Serial log may already be.
INDEX_NAME=modsec_index.log
MANIFEST_NAME=install-manifest
INOTIFY_WATCHES=524288

# ----------------------------------------------------------------------------- output -----
FAILED=0
CHANGED=0
step() { printf '==> %s\n' "$*"; }
# say STATUS TEXT: one line per thing done; the statuses that mean "changed" are counted.
say() {
    local status=$1; shift
    printf '  %-10s %s\n' "$status" "$*"
    case $status in
        installed|updated|replaced|created|removed|enabled|started|restarted|reloaded|applied|stopped|disabled)
            CHANGED=$((CHANGED + 1)) ;;
    esac
}
note() { printf '  %-10s %s\n' "note" "$*"; }    # information, not a change
warn() { printf '  %-10s %s\n' "WARNING" "$*" >&2; }
fail() { printf '  %-10s %s\n' "ERROR" "$*" >&2; FAILED=1; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
# What is left to the administrator (Apache's configuration, foreign jails, starting without
# systemd): listed at the end, in the order to do it, each with the commands that do it.
TODO_APACHE=() TODO_FAIL2BAN=() TODO_START=() APACHE_RESTART=0
# todo LIST TEXT [COMMAND...]
todo() {
    local -n list=$1
    local item=$2 command
    shift 2
    for command in "$@"; do [ -n "$command" ] && item+=$'\n'"       \$ $command"; done
    list+=("$item")
}
print_todo() {
    local items=("${TODO_APACHE[@]}") n=0 item restart
    if [ ${#TODO_APACHE[@]} -gt 0 ] || [ "$APACHE_RESTART" = 1 ]; then
        if systemd_running || ! live; then restart="systemctl restart $APACHE_SERVICE"
        else restart="$APACHE_CTL restart"; fi
        todo items "Restart Apache: ModSecurity reads its configuration only when Apache starts." "$restart"
    fi
    items+=("${TODO_FAIL2BAN[@]}" "${TODO_START[@]}")
    [ ${#items[@]} -gt 0 ] || return 0
    echo
    echo "Still to do (install.sh leaves these to you), in this order:"
    for item in "${items[@]}"; do
        n=$((n + 1))
        printf '  %d. %s\n' "$n" "$item"
    done
}

R() { printf '%s%s' "$ROOT" "$1"; }           # a system path, inside --root
sha() { sha256sum "$1" | cut -d' ' -f1; }
mode_of() { stat -c %a "$1"; }
have() { command -v "$1" >/dev/null 2>&1; }
live() { [ -z "$ROOT" ]; }
systemd_running() { live && [ -d /run/systemd/system ]; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/modsec-tools-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# ----------------------------------------------------------------------------- manifest ---
# One line per thing install.sh made: TYPE<TAB>SHA256-or--<TAB>PATH (PATH as on the target
# system, without --root). Types: file (ours, replaced on upgrade), once (written once, then
# the administrator's), link, tree (the venv), dir (created, removed if empty), data (kept),
# acl (kept: see --uninstall).
declare -A OLD_TYPE=() OLD_SHA=() NEW_TYPE=() NEW_SHA=()
MANIFEST=""    # set once state_dir is known
load_manifest() {
    local path=$1 type hash name
    [ -f "$path" ] || return 0
    while IFS=$'\t' read -r type hash name; do
        case $type in ''|'#'*) continue ;; esac
        OLD_TYPE[$name]=$type
        OLD_SHA[$name]=$hash
    done < "$path"
}
record() { NEW_TYPE[$2]=$1; NEW_SHA[$2]=${3:--}; }

# mkdir_p PATH MODE [TYPE]: create PATH and missing parents, recording each one created.
mkdir_p() {
    local path=$1 mode=$2 type=${3:-dir} parts=() p
    p=$path
    while [ ! -d "$(R "$p")" ]; do parts=("$p" "${parts[@]}"); p=$(dirname "$p"); done
    for p in "${parts[@]}"; do
        mkdir "$(R "$p")"
        if [ "$p" = "$path" ]; then
            chmod "$mode" "$(R "$p")"
            record "$type" "$p"
        else
            chmod 0755 "$(R "$p")"
            record dir "$p"
        fi
    done
    [ ${#parts[@]} -eq 0 ] && return 1
    return 0
}

# put_file SOURCE DEST MODE: install a file we own. Unchanged if equal; replaced if it
# differs (a copy the administrator edited is saved first).
put_file() {
    local source=$1 dest=$2 mode=$3 target want
    target=$(R "$dest")
    want=$(sha "$source")
    if [ -f "$target" ] && [ ! -L "$target" ]; then
        if [ "$(sha "$target")" = "$want" ]; then
            if [ "$(mode_of "$target")" != "${mode#0}" ]; then
                chmod "$mode" "$target"
                say updated "$dest (mode $mode)"
            else
                say unchanged "$dest"
            fi
            record file "$dest" "$want"
            return
        fi
        if [ "${OLD_SHA[$dest]:-}" = "$(sha "$target")" ]; then
            write_file "$source" "$dest" "$mode"
            say updated "$dest"
        else
            cp -p "$target" "$target.modsec-tools-save"
            write_file "$source" "$dest" "$mode"
            say replaced "$dest (the previous copy differed: saved as $dest.modsec-tools-save)"
        fi
    else
        [ -e "$target" ] || [ -L "$target" ] && rm -f "$target"
        mkdir_p "$(dirname "$dest")" 0755 || true
        write_file "$source" "$dest" "$mode"
        say installed "$dest"
    fi
    record file "$dest" "$want"
}

# put_once SOURCE DEST MODE WHAT: write DEST only if absent; from then on it is the
# administrator's. It stays in the manifest (with the checksum we wrote) while it is ours.
put_once() {
    local source=$1 dest=$2 mode=$3 what=$4 target
    target=$(R "$dest")
    if [ -e "$target" ] || [ -L "$target" ]; then
        if [ -n "${OLD_TYPE[$dest]:-}" ]; then
            record once "$dest" "${OLD_SHA[$dest]}"
            if [ "$(sha "$target")" = "${OLD_SHA[$dest]}" ]; then
                say unchanged "$dest"
            else
                say unchanged "$dest (edited by you: kept as is)"
            fi
        else
            say unchanged "$dest (yours: never overwritten)"
        fi
        return
    fi
    mkdir_p "$(dirname "$dest")" 0755 || true
    write_file "$source" "$dest" "$mode"
    record once "$dest" "$(sha "$target")"
    say created "$dest ($what)"
}

write_file() {
    local source=$1 dest=$2 mode=$3 target tmp
    target=$(R "$dest")
    tmp=$(dirname "$target")/.$(basename "$target").install-tmp
    cp "$source" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$target"
}

write_manifest() {
    local name file=$TMP/manifest
    # Keep what earlier runs created and still exists (directories are "created" only once).
    for name in "${!OLD_TYPE[@]}"; do
        [ -n "${NEW_TYPE[$name]:-}" ] && continue
        case ${OLD_TYPE[$name]} in
            dir|data|acl) [ -e "$(R "$name")" ] && record "${OLD_TYPE[$name]}" "$name" "${OLD_SHA[$name]}" ;;
        esac
    done
    {
        printf '# modsec-tools install manifest: written by install.sh, read by install.sh --uninstall\n'
        for name in "${!NEW_TYPE[@]}"; do
            printf '%s\t%s\t%s\n' "${NEW_TYPE[$name]}" "${NEW_SHA[$name]}" "$name"
        done | sort -t$'\t' -k3
    } > "$file"
    if [ -f "$(R "$MANIFEST")" ] && cmp -s "$file" "$(R "$MANIFEST")"; then
        say unchanged "$MANIFEST"
    elif [ -f "$(R "$MANIFEST")" ]; then
        write_file "$file" "$MANIFEST" 0600
        say updated "$MANIFEST"
    else
        write_file "$file" "$MANIFEST" 0600
        say created "$MANIFEST"
    fi
}

# Files an earlier run installed that this run no longer installs (a bundle file removed
# upstream): removed if unchanged.
remove_obsolete() {
    local name target
    for name in "${!OLD_TYPE[@]}"; do
        [ -n "${NEW_TYPE[$name]:-}" ] && continue
        [ "${OLD_TYPE[$name]}" = file ] || continue
        target=$(R "$name")
        [ -f "$target" ] || continue
        if [ "$(sha "$target")" = "${OLD_SHA[$name]}" ]; then
            rm -f "$target"
            say removed "$name (no longer part of modsec-tools)"
        else
            say unchanged "$name (no longer part of modsec-tools, but edited by you: kept)"
        fi
    done
}

# ----------------------------------------------------------------------------- detection --
OS_FAMILY=unknown
detect_os() {
    local id="" like=""
    if [ -r "$(R /etc/os-release)" ]; then
        # shellcheck disable=SC1090
        id=$(. "$(R /etc/os-release)"; echo "${ID:-}")
        # shellcheck disable=SC1090
        like=$(. "$(R /etc/os-release)"; echo "${ID_LIKE:-}")
    fi
    case " $id $like " in
        *" debian "*|*" ubuntu "*) OS_FAMILY=debian ;;
        *" rhel "*|*" fedora "*|*" centos "*|*" rocky "*|*" almalinux "*) OS_FAMILY=rhel ;;
    esac
}

# Apache layout and ModSecurity's settings, read by modsec_tools.serverconf the way Apache
# reads its configuration (includes followed, the last directive wins). Sets APACHE
# (apache2|httpd|none), APACHE_USER, APACHE_GROUP, SERVER_ROOT, APACHE_LOGDIR, APACHE_CTL,
# APACHE_SERVICE, MS_* and FINDINGS: what keeps our jails from banning (Apache's
# configuration, the administrator's), each with the commands that fix it (FINDING_FIX).
APACHE=none APACHE_USER="" APACHE_GROUP="" SERVER_ROOT="" APACHE_LOGDIR="" APACHE_CTL=""
APACHE_SERVICE="" MS_TYPE="" MS_STORAGE="" MS_LOG="" MS_SOURCE="" MS_LOADED=0 MS_DROPIN=""
FINDINGS=() FINDING_FIX=()
detect_apache() {
    local args=() key value
    [ -n "$ROOT" ] && args+=(--root "$ROOT")
    [ -n "${1:-}" ] && args+=(--storage-dir "$1")
    "$(R "$VENV")/bin/python" -I -B -m modsec_tools.serverconf "${args[@]}" > "$TMP/facts" \
        || die "reading Apache's configuration failed (modsec_tools.serverconf, above)"
    FINDINGS=() FINDING_FIX=()
    while IFS=$'\t' read -r key value; do
        case $key in
            layout) APACHE=$value ;;
            server_root) SERVER_ROOT=$value ;;
            user) APACHE_USER=$value ;;
            group) APACHE_GROUP=$value ;;
            logdir) APACHE_LOGDIR=$value ;;
            loaded) MS_LOADED=$value ;;
            log_type) MS_TYPE=$value ;;
            storage) MS_STORAGE=$value ;;
            index) MS_LOG=$value ;;
            source) MS_SOURCE=$value ;;
            dropin) MS_DROPIN=$value ;;
            ctl) APACHE_CTL=$value ;;
            service) APACHE_SERVICE=$value ;;
            finding)     # level, kind, text
                FINDINGS+=("$value")
                # install.sh knows the command that sets ModSecurity's audit log up
                case $value in
                    *$'\t'audit_log$'\t'*) FINDING_FIX+=("$SRC/install.sh --configure-modsecurity"$'\n') ;;
                    *) FINDING_FIX+=("") ;;
                esac ;;
            command) FINDING_FIX[-1]+="$value"$'\n' ;;
        esac
    done < "$TMP/facts"
}

# The firewall family the modsec-block action drives.
FIREWALL=nftables
detect_firewall() {
    if have iptables && iptables -V 2>/dev/null | grep -q legacy; then
        FIREWALL=legacy
    fi
}

# ----------------------------------------------------------------------------- steps ------
step_preflight() {
    detect_os
    if live; then
        if have dpkg-query && dpkg-query -W -f='${Status}' modsec-tools 2>/dev/null \
                | grep -q 'install ok installed'; then
            die "the modsec-tools Debian package is installed: use apt, not install.sh (or remove it first)"
        fi
        if have rpm && rpm -q modsec-tools >/dev/null 2>&1; then
            die "the modsec-tools RPM is installed: use dnf, not install.sh (or remove it first)"
        fi
    fi
    [ -f "$SRC/setup.cfg" ] && [ -d "$SRC/modsec_tools" ] \
        || die "$SRC is not a modsec-tools source tree"
}

step_deps() {
    step "deps: system packages"
    if [ -n "$ROOT" ]; then say skipped "--root: installs no packages"; return; fi
    if [ "$NO_DEPS" = 1 ]; then say skipped "--no-deps"; return; fi
    detect_firewall
    local pkgs=() missing=() p
    case $OS_FAMILY in
        debian)
            # logrotate: step "system" installs a rotation that nothing would run without it
            pkgs=(fail2ban python3 python3-venv python3-pip python3-pyinotify python3-pymysql
                  python3-setuptools python3-wheel logrotate)
            if [ "$FIREWALL" = legacy ]; then pkgs+=(iptables python3-iptables)
            else pkgs+=(ipset nftables); fi
            [ "$ENABLE_ACL" = 1 ] && pkgs+=(acl)
            for p in "${pkgs[@]}"; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
                    || missing+=("$p")
            done
            if [ ${#missing[@]} -eq 0 ]; then
                say unchanged "all present: ${pkgs[*]}"
                return
            fi
            note "apt-get install ${missing[*]}"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq || die "apt-get update failed"
            apt-get install -y -qq "${missing[@]}" > "$TMP/apt.log" 2>&1 \
                || { tail -20 "$TMP/apt.log" >&2; die "apt-get install failed"; }
            say installed "${missing[*]}"
            ;;
        rhel)
            # fail2ban comes from EPEL; pyinotify has no python3.11 package: pip fetches it.
            pkgs=(fail2ban-server python3.11 python3.11-pip python3.11-setuptools
                  python3.11-wheel logrotate ipset nftables)
            [ "$ENABLE_ACL" = 1 ] && pkgs+=(acl)
            for p in "${pkgs[@]}"; do rpm -q "$p" >/dev/null 2>&1 || missing+=("$p"); done
            if [ ${#missing[@]} -eq 0 ]; then
                say unchanged "all present: ${pkgs[*]}"
                return
            fi
            if ! rpm -q epel-release >/dev/null 2>&1 && [[ " ${missing[*]} " == *" fail2ban-server "* ]]; then
                die "fail2ban is in EPEL: dnf install epel-release (RHEL: also enable CodeReady Builder), then rerun"
            fi
            dnf install -y -q "${missing[@]}" || die "dnf install failed"
            say installed "${missing[*]}"
            ;;
        *)
            die "unknown distribution (not Debian/Ubuntu or RHEL family): install fail2ban, Python >= 3.11 with venv, pyinotify and pymysql yourself, then rerun with --no-deps"
            ;;
    esac
}

PY=""
choose_python() {
    local candidates=() p
    if [ -n "$PYTHON" ]; then candidates=("$PYTHON")
    else candidates=(/usr/bin/python3 python3.13 python3.12 python3.11); fi
    for p in "${candidates[@]}"; do
        have "$p" || continue
        if "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PY=$(command -v "$p")
            return 0
        fi
    done
    die "no Python >= 3.11 found (tried: ${candidates[*]}); install one or name it with --python"
}

# The files that make the package: copied to a scratch directory, so building leaves no
# build/ or *.egg-info in this tree, and hashed, so an unchanged source is not reinstalled.
source_copy() {
    local dest=$TMP/src
    mkdir -p "$dest"
    (cd "$SRC" && find setup.cfg pyproject.toml README.md modsec_tools \
        -name __pycache__ -prune -o -type f \( -name '*.py' -o -name py.typed -o -name '*.cfg' \
        -o -name '*.toml' -o -name '*.md' \) -print 2>/dev/null \
        | LC_ALL=C sort \
        | while IFS= read -r f; do mkdir -p "$dest/$(dirname "$f")"; cp "$f" "$dest/$f"; done)
    (cd "$dest" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
}

step_python() {
    step "python: virtual environment $VENV and $WRAPPER"
    choose_python
    local venv system_site=0 offline=0 own_pip=1 src_sha stamp want version
    venv=$(R "$VENV")
    version=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    # Preferred: the distribution's pyinotify/pymysql (security updates come with apt),
    # setuptools/wheel to build offline, and its pip (>= 22.3 for --python) driving a venv
    # without a pip of its own. Otherwise the venv gets pip and fetches what is missing.
    if "$PY" -c 'import pyinotify, pymysql' 2>/dev/null; then
        system_site=1
        if "$PY" -c 'import setuptools, wheel' 2>/dev/null; then
            offline=1
            "$PY" -c 'import sys, pip; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (22, 3))' \
                2>/dev/null && own_pip=0
        fi
    fi
    src_sha=$(source_copy)
    want="python=$PY $version system-site-packages=$system_site own-pip=$own_pip source=$src_sha"
    stamp=$venv/.modsec-tools-install
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
            && "$venv/bin/python" -I -B -c 'import modsec_tools' 2>/dev/null; then
        say unchanged "$VENV (Python $version, source $src_sha)"
    else
        local action=installed
        if [ -e "$venv" ]; then
            [ -f "$venv/pyvenv.cfg" ] || die "$venv exists and is not a virtual environment: move it away"
            action=updated
            # Same interpreter and layout: reinstall the package only; otherwise rebuild.
            if [ ! -f "$stamp" ] || [ "$(cut -d' ' -f1-4 "$stamp")" != "$(echo "$want" | cut -d' ' -f1-4)" ] \
                    || ! "$venv/bin/python" -I -B -c 'import sys' 2>/dev/null; then
                rm -rf "$venv"
            fi
        fi
        if [ ! -e "$venv" ]; then
            mkdir_p "$(dirname "$VENV")" 0755 || true
            local args=()
            [ "$system_site" = 1 ] && args+=(--system-site-packages)
            [ "$own_pip" = 0 ] && args+=(--without-pip)
            "$PY" -m venv "${args[@]}" "$venv" 2> "$TMP/venv.log" || {
                cat "$TMP/venv.log" >&2
                die "$PY -m venv failed: install python3-venv (Debian) or the python3.x-pip package (RHEL)"; }
        fi
        local pip
        if [ "$own_pip" = 0 ]; then pip=("$PY" -m pip --python "$venv/bin/python")
        else pip=("$venv/bin/python" -m pip); fi
        # --verbose: into pip.log only, which is shown when the install fails
        pip+=(install --verbose --no-cache-dir --disable-pip-version-check
              --no-warn-script-location --force-reinstall)
        if [ "$offline" = 1 ]; then
            pip+=(--no-deps --no-index --no-build-isolation)
        elif [ "$system_site" = 1 ]; then
            pip+=(--no-deps)
        fi
        [ "$system_site" = 1 ] || note "pyinotify/pymysql are not installed for $PY: pip fetches them from PyPI"
        (cd "$TMP" && TMPDIR=$TMP "${pip[@]}" "$TMP/src") > "$TMP/pip.log" 2>&1 || {
            tail -n 80 "$TMP/pip.log" >&2; die "pip install failed (the end of its output is above)"; }
        rm -rf "$TMP/src/build" "$TMP/src"/*.egg-info
        printf '%s\n' "$want" > "$stamp"
        say "$action" "$VENV (Python $version$([ "$system_site" = 1 ] && echo ', system pyinotify/pymysql'))"
    fi
    record tree "$VENV"
    # A wrapper, not a symlink to the venv's console script: that script's #! line holds the
    # path the venv was built at, which is wrong for a --root staged tree. -I: isolated, so
    # neither the current directory nor PYTHON* variables can change what is imported.
    cat > "$TMP/wrapper" <<EOF
#!/bin/sh
# modsec-tools: written by modsec-tools install.sh; runs the virtual environment $VENV.
exec $VENV/bin/python -I -m modsec_tools.cli "\$@"
EOF
    put_file "$TMP/wrapper" "$WRAPPER" 0755
}

# modsec-tools itself, from the staged venv (works for --root too: the venv's python finds
# its site-packages from its own location).
mt() { "$(R "$VENV")/bin/python" -I -B -m modsec_tools.cli "$@"; }

step_fail2ban() {
    step "fail2ban: filter, jails and action into $F2B"
    local sub f n=0
    for sub in filter.d jail.d action.d; do
        for f in "$SRC/fail2ban/$sub"/*; do
            [ -f "$f" ] || continue
            case $f in *.local|*~|*.swp|*.orig|*.rej) continue ;; esac
            put_file "$f" "$F2B/$sub/$(basename "$f")" 0644
            n=$((n + 1))
        done
    done
    # the action's package, which modsec-block.py imports from its own directory
    while IFS= read -r -d '' f; do
        put_file "$f" "$F2B/${f#"$SRC/fail2ban/"}" 0644
    done < <(find "$SRC/fail2ban/action.d" -mindepth 2 -type f -name '*.py' ! -path '*/__pycache__/*' -print0 | sort -z)
    [ "$n" -gt 0 ] || warn "this tree has no fail2ban/*.d files yet: nothing installed"
    local local_file
    for local_file in "$(R "$F2B")"/{filter,jail,action}.d/modsec*.local; do
        [ -f "$local_file" ] && say unchanged "${local_file#"$ROOT"} (yours: never overwritten)"
    done
    return 0
}

step_config() {
    step "config: $CONFIG"
    detect_apache
    local storage="" index="" origin
    case $APACHE in
        apache2) note "Apache layout: Debian apache2 ($SERVER_ROOT, user $APACHE_USER)" ;;
        httpd) note "Apache layout: RHEL httpd ($SERVER_ROOT, user $APACHE_USER)" ;;
        none) note "Apache layout: none found (neither /etc/apache2 nor /etc/httpd)" ;;
    esac
    local index_source=$MS_SOURCE
    if [ "$MS_TYPE" = concurrent ] && [ -n "$MS_STORAGE" ]; then
        storage=$MS_STORAGE
        index=$MS_LOG
        origin="SecAuditLogStorageDir in $MS_SOURCE"
        note "ModSecurity: Concurrent, storage $storage${index:+, index $index} ($MS_SOURCE)"
    elif [ "$APACHE" != none ] && [ "$CONFIGURE_MODSEC" = 1 ]; then
        storage=$DEFAULT_STORAGE
        index=$APACHE_LOGDIR/$INDEX_NAME
        origin="the settings --configure-modsecurity writes ($MS_DROPIN)"
        index_source=$MS_DROPIN
        note "ModSecurity: ${MS_TYPE:+${MS_TYPE^} logs}${MS_TYPE:-no audit log settings} now; --configure-modsecurity sets Concurrent logs up, storage $storage, index $index"
    else
        if [ "$APACHE" != none ]; then
            storage=$DEFAULT_STORAGE
        fi
        origin="the default for the $APACHE layout"
        if [ "$APACHE" != none ] && [ "$MS_LOADED" != 1 ]; then
            warn "Apache does not load mod_security2 (a2enmod security2 on Debian). Once it does, modsec-tools needs:"
        elif [ "$APACHE" != none ] && [ -z "$MS_SOURCE$MS_LOG" ]; then
            warn "mod_security2 is enabled but has no audit log settings (Debian ships only /etc/modsecurity/modsecurity.conf-recommended, which Apache does not read). modsec-tools needs:"
        elif [ "$APACHE" != none ]; then
            warn "ModSecurity writes ${MS_TYPE:-Serial} logs${MS_SOURCE:+ ($MS_SOURCE)}; the watcher reads Concurrent storage trees. modsec-tools needs:"
        fi
        if [ "$APACHE" != none ]; then
            warn "  SecAuditLogType Concurrent"
            warn "  SecAuditLogStorageDir ${storage}"
            warn "  SecAuditLog $APACHE_LOGDIR/$INDEX_NAME   (the index)"
            warn "rerun with --configure-modsecurity to have them installed in $MS_DROPIN (checked with $APACHE_CTL -t), or set them yourself"
        fi
    fi
    local template=$SRC/packaging/modsec-tools.conf out=$TMP/config line
    [ -f "$template" ] || die "$template missing"
    : > "$out"
    while IFS= read -r line || [ -n "$line" ]; do
        if [ -n "$storage" ] && [[ $line == "#storage_dir ="* ]]; then
            printf '%s\n# set by install.sh from %s\nstorage_dir = %s\n' "$line" "$origin" "$storage" >> "$out"
        elif [ -n "$index" ] && [[ $line == "#index_log ="* ]]; then
            printf '%s\n# set by install.sh from SecAuditLog in %s\nindex_log = %s\n' "$line" "$index_source" "$index" >> "$out"
        else
            printf '%s\n' "$line" >> "$out"
        fi
    done < "$template"
    put_once "$out" "$CONFIG" 0644 "storage_dir ${storage:-default}${index:+, index_log $index}"
}

# --configure-modsecurity: the audit log settings modsec-tools reads, in a drop-in that
# Apache's ModSecurity configuration includes after its own settings (so they win), checked
# with "apache2ctl -t" and taken back if that fails. SecRuleEngine stays the administrator's.
step_modsecurity() {
    if [ "$CONFIGURE_MODSEC" = 0 ]; then
        [ -n "$MS_DROPIN" ] && keep_installed "$MS_DROPIN"
        return 0
    fi
    step "modsecurity: audit log settings${MS_DROPIN:+ in $MS_DROPIN}"
    if [ "$APACHE" = none ]; then
        fail "--configure-modsecurity: no Apache found (neither /etc/apache2 nor /etc/httpd)"; return 0
    fi
    if [ "$MS_LOADED" != 1 ]; then
        fail "--configure-modsecurity: Apache does not load mod_security2: enable it first (Debian: a2enmod security2)"; return 0
    fi
    if [ "$MS_TYPE" = concurrent ] && [ -n "$MS_STORAGE" ] && [ "$MS_SOURCE" != "$MS_DROPIN" ]; then
        say unchanged "ModSecurity writes a Concurrent tree already ($MS_STORAGE, $MS_SOURCE): no drop-in needed"
        keep_installed "$MS_DROPIN"
        return 0
    fi
    local storage=${SET[storage_dir]} index=${SET[index_log]:-$APACHE_LOGDIR/$INDEX_NAME}
    cat > "$TMP/modsecurity.conf" <<EOF
# Written by modsec-tools install.sh --configure-modsecurity (each such run rewrites it;
# --uninstall removes it unless you edited it). The audit log modsec-tools reads: one file
# per transaction in the storage tree, announced in the index once complete. Apache reads
# this file after ModSecurity's own configuration, so these settings win.
# SecRuleEngine (On, or DetectionOnly) is yours to set, in ModSecurity's own configuration.
SecAuditEngine RelevantOnly
SecAuditLogParts ABIJFHZ
SecAuditLogType Concurrent
SecAuditLogStorageDir $storage
SecAuditLogDirMode 0750
SecAuditLogFileMode 0640
SecAuditLog $index
EOF
    local target had=0
    target=$(R "$MS_DROPIN")
    if [ -f "$target" ] && cmp -s "$TMP/modsecurity.conf" "$target"; then
        put_file "$TMP/modsecurity.conf" "$MS_DROPIN" 0644
        return 0
    fi
    if live && ! apache_test "$TMP/apache-test.before"; then
        sed 's/^/  | /' "$TMP/apache-test.before" >&2
        fail "$APACHE_CTL -t fails already, before any change: fix Apache's configuration, then rerun"
        return 0
    fi
    [ -f "$target" ] && cp -p "$target" "$TMP/modsecurity.conf.previous" && had=1
    put_file "$TMP/modsecurity.conf" "$MS_DROPIN" 0644
    local why=""
    if live && ! apache_test "$TMP/apache-test"; then
        sed 's/^/  | /' "$TMP/apache-test" >&2
        why="$APACHE_CTL -t fails with it (above)"
    else
        detect_apache
        if [ "$MS_TYPE" != concurrent ] || [ "$MS_STORAGE" != "$storage" ]; then
            why="Apache reads ModSecurity's audit log settings after it, in $MS_SOURCE: set them there (as in $MS_DROPIN)"
        fi
    fi
    if [ -n "$why" ]; then
        unset "NEW_TYPE[$MS_DROPIN]" "NEW_SHA[$MS_DROPIN]"
        if [ "$had" = 1 ]; then
            write_file "$TMP/modsecurity.conf.previous" "$MS_DROPIN" 0644
            keep_installed "$MS_DROPIN"
        else
            rm -f "$target"
        fi
        detect_apache
        fail "$MS_DROPIN taken back ($why): Apache's configuration is as it was"
        return 0
    fi
    if live; then say ok "$APACHE_CTL -t: Apache accepts $MS_DROPIN"
    else note "--root: $APACHE_CTL -t is for the target system (not run)"; fi
    APACHE_RESTART=1
}

# apache_test OUTPUT: Apache's own configuration test.
apache_test() {
    if have "$APACHE_CTL"; then "$APACHE_CTL" -t > "$1" 2>&1
    else echo "$APACHE_CTL not found" > "$1"; return 1; fi
}

# keep_installed PATH: a file an earlier run installed, left as it is by this one, stays ours.
keep_installed() {
    [ "${OLD_TYPE[$1]:-}" = file ] && [ -f "$(R "$1")" ] && record file "$1" "${OLD_SHA[$1]}"
    return 0
}

# Effective settings (the .conf, its .local, defaults), read with modsec-tools itself.
declare -A SET=()
read_settings() {
    local name value
    mt config show --config "$(R "$CONFIG")" > "$TMP/settings" 2> "$TMP/settings.err" || {
        cat "$TMP/settings.err" >&2; die "the configuration $CONFIG is invalid (see above)"; }
    # "name = value" lines (an unset value: "name =" or "name = "), a [section] and comments
    while IFS= read -r line; do
        case $line in '#'*|'['*|'') continue ;; esac
        name=${line%%=*} value=${line#*=}
        name=${name%"${name##*[![:space:]]}"} value=${value#"${value%%[![:space:]]*}"}
        SET[$name]=$value
    done < "$TMP/settings"
    MANIFEST=${SET[state_dir]}/$MANIFEST_NAME
}

# A configuration written by an earlier run is never rewritten, so say so when ModSecurity
# has since been pointed elsewhere: the watcher would otherwise watch a tree nobody writes.
check_detected_paths() {
    [ "$MS_TYPE" = concurrent ] && [ -n "$MS_STORAGE" ] || return 0
    local local_file=${CONFIG%.conf}.local
    if [ "${SET[storage_dir]}" != "$MS_STORAGE" ]; then
        warn "ModSecurity writes its storage tree to $MS_STORAGE ($MS_SOURCE) but modsec-tools reads ${SET[storage_dir]}: set storage_dir = $MS_STORAGE in $local_file"
    fi
    if [ -n "$MS_LOG" ] && [ "${SET[index_log]}" != "$MS_LOG" ]; then
        note "ModSecurity indexes entries in $MS_LOG; modsec-tools ${SET[index_log]:+reads ${SET[index_log]}}${SET[index_log]:-does not use it}. To take entries once indexed (size and md5 checked), set index_log = $MS_LOG in $local_file"
    fi
    return 0
}

step_dirs() {
    step "dirs: state, quarantine, logs, storage tree"
    ensure_dir "${SET[state_dir]}" 0750 data
    ensure_dir "${SET[quarantine_dir]}" 0700 data
    ensure_dir "$(dirname "${SET[event_log]}")" 0750 data
    if [ "$(dirname "${SET[archive]}")" != "$(dirname "${SET[event_log]}")" ]; then
        ensure_dir "$(dirname "${SET[archive]}")" 0750 data
    fi
    local log=${SET[event_log]}
    if [ -e "$(R "$log")" ]; then
        say unchanged "$log"
    else
        : > "$(R "$log")"
        chmod 0640 "$(R "$log")"
        say created "$log (empty, so the jail can start before the first event)"
    fi
    record data "$log"
    local storage=${SET[storage_dir]}
    if [ -d "$(R "$storage")" ]; then
        say unchanged "$storage (storage tree, $(stat -c '%U:%G %a' "$(R "$storage")"))"
    elif [ "$APACHE" = none ]; then
        warn "storage tree $storage does not exist and no Apache was found: create it where ModSecurity writes (SecAuditLogStorageDir)"
    else
        mkdir_p "$storage" 0750 dir || true
        if live; then
            chown "$APACHE_USER:$APACHE_GROUP" "$storage" 2>/dev/null \
                || warn "could not chown $storage to $APACHE_USER:$APACHE_GROUP"
            say created "$storage (storage tree, owner $APACHE_USER:$APACHE_GROUP, 0750)"
        else
            say created "$storage (storage tree, 0750; --root: chown it to $APACHE_USER:$APACHE_GROUP on the target)"
        fi
    fi
    [ "$APACHE" = none ] || check_apache_reaches "$storage"
}

# ModSecurity creates the entries in Apache's children, as the Apache user: every directory
# above the tree must let that user in. /var/log/apache2 (root:adm 0750) and /var/log/httpd
# (0700) do not, and then ModSecurity only logs "Audit log: Failed to create subdirectories
# ... Permission denied" and no entry is ever written. Mode bits only: a directory with an
# ACL is taken as reachable (--enable-acl, or the administrator's own). With --root the tree
# is not chowned yet (that happens on the target), so only the directories above it count.
check_apache_reaches() {
    local storage=$1 dir="" part parts blocker="" groups uid
    uid=$(id -u "$APACHE_USER" 2>/dev/null) || return 0     # no such user here
    groups=" $(id -G "$APACHE_USER") "
    IFS=/ read -ra parts <<< "${storage#/}"
    for part in "${parts[@]}"; do
        dir=$dir/$part
        [ -d "$(R "$dir")" ] || return 0
        if [ "$dir" = "$storage" ]; then
            live || break
            user_may "$(R "$dir")" 3 "$uid" "$groups" || blocker=$dir
        else
            user_may "$(R "$dir")" 1 "$uid" "$groups" || blocker=$dir
        fi
        [ -z "$blocker" ] || break
    done
    [ -n "$blocker" ] || return 0
    warn "Apache's user $APACHE_USER cannot write the storage tree $storage: $blocker ($(stat -c '%U:%G %a' "$(R "$blocker")")) does not let it $([ "$blocker" = "$storage" ] && echo write || echo in)."
    warn "ModSecurity would log 'Audit log: Failed to create subdirectories ... Permission denied' and write no entry. Use a tree Apache can reach, e.g. $DEFAULT_STORAGE, in both SecAuditLogStorageDir and storage_dir (modsec-tools.local)."
}

# user_may PATH BITS UID " GID... ": whether that uid with those gids gets BITS (1 = search,
# 3 = write + search) on PATH from its mode bits.
user_may() {
    local path=$1 want=$2 user=$3 groups=$4 uid gid mode digit
    read -r uid gid mode <<< "$(stat -c '%u %g %a' "$path")"
    getfacl -cs "$path" 2>/dev/null | grep -q . && return 0     # extended ACL: not judged here
    mode=00$mode; mode=${mode: -3}     # "0" for mode 000; setuid/setgid digits dropped
    if [ "$uid" = "$user" ]; then digit=${mode:0:1}
    elif [[ $groups == *" $gid "* ]]; then digit=${mode:1:1}
    else digit=${mode:2:1}
    fi
    (( (digit & want) == want ))
}

ensure_dir() {
    local dir=$1 mode=$2 type=$3 target
    target=$(R "$dir")
    if mkdir_p "$dir" "$mode" "$type"; then
        say created "$dir ($mode)"
    else
        [ -d "$target" ] || die "$dir exists and is not a directory"
        if [ "$(mode_of "$target")" != "${mode#0}" ]; then
            say unchanged "$dir (mode $(mode_of "$target"), recommended $mode: left as you set it)"
        else
            say unchanged "$dir"
        fi
        [ -n "${OLD_TYPE[$dir]:-}" ] && record "${OLD_TYPE[$dir]}" "$dir"
    fi
    return 0
}

step_acl() {
    [ "$ENABLE_ACL" = 1 ] || return 0
    step "acl: POSIX ACL on the storage tree"
    local storage=${SET[storage_dir]} target group=${ACL_GROUP:-$APACHE_GROUP}
    target=$(R "$storage")
    [ -n "$group" ] || { fail "--enable-acl: no Apache group detected: use --enable-acl=GROUP"; return; }
    have setfacl || { fail "--enable-acl: setfacl not found (apt-get install acl)"; return; }
    [ -d "$target" ] || { fail "--enable-acl: $storage does not exist"; return; }
    local before after
    before=$(find "$target" -type d -print0 | xargs -0 getfacl -cp 2>/dev/null | sha256sum)
    find "$target" -type d -print0 | xargs -0 setfacl -m "g:$group:rwx,m::rwx" \
        || { fail "setfacl failed on $storage (is the file system mounted with ACL support?)"; return; }
    find "$target" -type d -print0 | xargs -0 setfacl -d -m "g:$group:rwx,m::rwx"
    after=$(find "$target" -type d -print0 | xargs -0 getfacl -cp 2>/dev/null | sha256sum)
    if [ "$before" = "$after" ]; then
        say unchanged "$storage: group $group rwx (access and default ACL)"
    else
        say applied "$storage: group $group rwx (access and default ACL, on every existing directory)"
    fi
    record acl "$storage" "$group"
}

# The jails the bundle defines: section names of jail.d/modsec.conf.
bundle_jails() {
    local conf=$SRC/fail2ban/jail.d/modsec.conf
    [ -f "$conf" ] || return 0
    sed -n 's/^[[:space:]]*\[\([^]]*\)\][[:space:]]*$/\1/p' "$conf" | grep -viE '^(DEFAULT|INCLUDES|Definition|Init)$' || true
}

step_jails() {
    step "jails: $JAIL_LOCAL"
    local jails
    jails=$(bundle_jails)
    if [ -z "$jails" ]; then
        warn "this tree has no fail2ban/jail.d/modsec.conf yet: no jail enabled"
        return 0
    fi
    local out=$TMP/jail.local j
    {
        printf '# Written once by modsec-tools install.sh: enables the modsec-tools jails.\n'
        printf '# It is yours now: install.sh never overwrites it; --uninstall removes it only\n'
        printf '# if unchanged. Settings here override jail.d/modsec.conf (bantime, ignoreip...).\n'
        for j in $jails; do
            printf '\n[%s]\nenabled = true\n' "$j"
        done
    } > "$out"
    put_once "$out" "$JAIL_LOCAL" 0644 "enables: $(echo $jails)"
}

step_system() {
    step "system: systemd unit, logrotate, manual page, documentation, sysctl"
    local before=$CHANGED
    put_file "$SRC/packaging/modsec-tools.service" "$UNIT" 0644
    put_file "$SRC/packaging/modsec-tools-fleet.service" "$FLEET_UNIT" 0644
    # Paths the unit must be able to write, beyond its defaults (drop-in).
    local paths=() p
    for p in "${SET[storage_dir]}" "${SET[state_dir]}" "${SET[quarantine_dir]}" \
             "$(dirname "${SET[event_log]}")" "$(dirname "${SET[archive]}")"; do
        case $p in
            /var/lib/modsec-tools|/var/lib/modsec-tools/*|/var/log/modsec-tools) continue ;;
            "$DEFAULT_STORAGE") continue ;;
        esac
        [[ " ${paths[*]} " == *" -$p "* ]] || paths+=("-$p")
    done
    {
        printf '# Written by modsec-tools install.sh from %s (rewritten on each run).\n' "$CONFIG"
        printf '# The watcher must write its storage tree (it deletes processed entries) and its own\n'
        printf '# directories; the unit allows the Debian/RHEL defaults, this adds the configured ones.\n'
        printf '[Service]\n'
        if [ ${#paths[@]} -gt 0 ]; then printf 'ReadWritePaths=%s\n' "${paths[*]}"
        else printf '# (all configured paths are the defaults the unit already allows)\n'; fi
    } > "$TMP/dropin"
    put_file "$TMP/dropin" "$DROPIN" 0644
    [ "$CHANGED" = "$before" ] || UNIT_CHANGED=1
    local rotate
    rotate=$(cat "$SRC/packaging/modsec-tools.logrotate")
    rotate=${rotate//\/var\/log\/modsec-tools\/events.log/${SET[event_log]}}
    rotate=${rotate//\/var\/log\/modsec-tools\/archive.log/${SET[archive]}}
    rotate=${rotate//\/var\/log\/modsec-tools\/watch.log/$(dirname "${SET[event_log]}")/watch.log}
    rotate=${rotate//\/var\/lib\/modsec-tools\/modsec-tools.lock/${SET[state_dir]}/modsec-tools.lock}
    printf '%s\n' "$rotate" > "$TMP/logrotate"
    put_file "$TMP/logrotate" "$LOGROTATE" 0644
    put_file "$SRC/packaging/modsec-tools.1" "$MANPAGE" 0644
    install_docs
    local current
    current=$(cat /proc/sys/fs/inotify/max_user_watches 2>/dev/null || echo 0)
    if [ -n "${OLD_TYPE[$SYSCTL]:-}" ] || [ "$current" -lt "$INOTIFY_WATCHES" ]; then
        put_file "$SRC/packaging/60-modsec-tools.conf" "$SYSCTL" 0644
        if live && [ "$current" -lt "$INOTIFY_WATCHES" ]; then
            sysctl -q -w "fs.inotify.max_user_watches=$INOTIFY_WATCHES" >/dev/null 2>&1 \
                && say applied "fs.inotify.max_user_watches = $INOTIFY_WATCHES (was $current)" \
                || warn "could not set fs.inotify.max_user_watches now (container?): it applies at boot"
        fi
    else
        say unchanged "fs.inotify.max_user_watches is $current already (>= $INOTIFY_WATCHES): no sysctl file needed"
    fi
}

# The documentation the manual page names, and the sample logs an administrator can run
# fail2ban-regex on (docs/install.md, "See it working").
install_docs() {
    local f
    for f in "$SRC/README.md" "$SRC"/docs/*.md; do
        put_file "$f" "$DOCDIR/$(basename "$f")" 0644
    done
    put_file "$SRC/packaging/60-modsec-tools.conf" "$DOCDIR/examples/60-modsec-tools.conf" 0644
    for f in "$SRC"/fail2ban/tests/files/logs/*; do
        [ -f "$f" ] && put_file "$f" "$DOCDIR/examples/fail2ban-regex/$(basename "$f")" 0644
    done
    return 0
}

UNIT_CHANGED=0
F2B_CHANGED=0
step_check() {
    step "check: configuration"
    # Read again: our jails and the drop-in are in place now.
    [ "$APACHE" = none ] || detect_apache "${SET[storage_dir]}"
    if [ -n "$ROOT" ]; then
        # config show already validated every value; config check would open the database
        # and test paths of the live system.
        say ok "config show: every setting of $CONFIG is valid (--root: config check is for the live system)"
    elif mt config check > "$TMP/check" 2>&1; then
        sed 's/^/  | /' "$TMP/check"
        say ok "modsec-tools config check passed"
    else
        sed 's/^/  | /' "$TMP/check" >&2
        # Errors in Apache's configuration are the administrator's to fix (listed at the
        # end); only the others are ours.
        local finding
        for finding in "${FINDINGS[@]}"; do printf '%s: %s\n' "${finding%%$'\t'*}" "${finding##*$'\t'}"; done > "$TMP/theirs"
        if grep '^error: ' "$TMP/check" | grep -qvxF -f "$TMP/theirs"; then
            fail "modsec-tools config check found errors (above): fix them in $CONFIG_DIR/modsec-tools.local"
        else
            say ok "modsec-tools config check: our settings are right; its errors are in Apache's configuration (see the end)"
        fi
    fi
    report_findings
    [ -z "$ROOT" ] || return 0
    if have fail2ban-client; then
        check_fail2ban
    else
        fail "fail2ban-client not found (install fail2ban, or run without --no-deps)"
        F2B_BROKEN=1
    fi
}
F2B_BROKEN=0
F2B_FOREIGN=0    # the test fails for another package's jail only: ours are fine

# fail2ban's configuration test covers every enabled jail, and one that cannot start fails
# it (and fail2ban's start) for all of them: Debian 12 enables its sshd jail, whose
# /var/log/auth.log does not exist (the journal only). So ours are tested on their own
# first, in a copy of the configuration where every other jail is disabled: only an error
# there is ours. Then the whole configuration, whose failure is then another jail's.
check_fail2ban() {
    local copy=$TMP/fail2ban jail
    rm -rf "$copy"
    cp -a "$F2B" "$copy"
    {
        printf '# install.sh: the modsec-tools jails on their own\n'
        for jail in $(foreign_jails); do printf '[%s]\nenabled = false\n' "$jail"; done
    } > "$copy/jail.d/zzzz-modsec-tools-alone.local"
    if ! fail2ban-client -c "$copy" -t > "$TMP/f2b-ours" 2>&1; then
        sed 's/^/  | /' "$TMP/f2b-ours" >&2
        fail "fail2ban-client -t fails for the modsec-tools jails, filters or action (above): fail2ban was not reloaded"
        F2B_BROKEN=1
        return 0
    fi
    say ok "fail2ban-client -t: the modsec-tools jails ($(bundle_jails | paste -sd, -)), their filters and action are valid"
    if fail2ban-client -t > "$TMP/f2b" 2>&1; then
        say ok "fail2ban-client -t: the whole configuration is valid"
        return 0
    fi
    F2B_BROKEN=1 F2B_FOREIGN=1
    sed 's/^/  | /' "$TMP/f2b" >&2
    local failing
    failing=$(sed -n -e 's/.*Have not found any log file for \(.*\) jail.*/\1/p' \
                     -e "s/.*Errors in jail '\\(.*\\)'.*/\\1/p" "$TMP/f2b" | sort -u)
    [ -n "$failing" ] || failing="(not named)"
    for jail in $failing; do
        warn "fail2ban's jail \"$jail\" is not a modsec-tools jail, and it cannot start (above): until it is fixed fail2ban starts no jail at all, ours included. Ours are valid on their own."
        foreign_fix "$jail"
    done
}

# The jails of the configuration that are not ours (section names of the jail files).
foreign_jails() {
    local files=("$F2B/jail.conf" "$F2B"/jail.d/*.conf "$F2B/jail.local" "$F2B"/jail.d/*.local)
    local f
    for f in "${files[@]}"; do [ -f "$f" ] && cat "$f"; done \
        | sed -n 's/^[[:space:]]*\[\([^]]*\)\][[:space:]]*$/\1/p' \
        | grep -vxE 'DEFAULT|INCLUDES|Definition|Init' | sort -u | grep -vxF -f <(bundle_jails) || true
}

# foreign_fix JAIL: what to tell the administrator to do about a jail that is not ours.
foreign_fix() {
    local jail=$1 local_file=$F2B/jail.d/$1.local python
    if [ "$jail" = sshd ] && grep -q "Have not found any log file for sshd jail" "$TMP/f2b"; then
        # Debian 12 logs sshd to the journal: fail2ban reads it with python3-systemd.
        python=$(sed -n '1s/^#! *\([^ ]*\).*/\1/p' "$(command -v fail2ban-server)" 2>/dev/null)
        local commands=()
        "${python:-python3}" -c 'import systemd.journal' 2>/dev/null \
            || commands+=("apt-get install python3-systemd")
        if [ -e "$local_file" ]; then
            todo TODO_FAIL2BAN "fail2ban's sshd jail (not ours) reads /var/log/auth.log, which this system does not write (sshd logs to the journal): add \"backend = systemd\" under [sshd] in $local_file (or enabled = false)." "${commands[@]}"
        else
            commands+=("printf '[sshd]\\nbackend = systemd\\n' > $local_file")
            todo TODO_FAIL2BAN "fail2ban's sshd jail (not ours) reads /var/log/auth.log, which this system does not write (sshd logs to the journal): let it read the journal, or set enabled = false under [sshd] in $local_file." "${commands[@]}"
        fi
    elif [ "$jail" = "(not named)" ]; then
        todo TODO_FAIL2BAN "fail2ban's configuration test fails outside the modsec-tools jails (see \"fail2ban-client -t\"): fix it."
    else
        todo TODO_FAIL2BAN "fail2ban's jail $jail (not ours) cannot start (see \"fail2ban-client -t\"): fix its logpath or filter, or set enabled = false under [$jail] in $local_file."
    fi
}

# What in Apache's configuration keeps our jails from banning: reported, and left to do.
report_findings() {
    local i level text
    for i in "${!FINDINGS[@]}"; do
        level=${FINDINGS[$i]%%$'\t'*} text=${FINDINGS[$i]##*$'\t'}
        if [ "$level" = error ]; then printf '  %-10s %s\n' "NOT READY" "$text" >&2
        else warn "$text"; fi
        local fix=() line
        while IFS= read -r line; do [ -n "$line" ] && fix+=("$line"); done <<< "${FINDING_FIX[$i]}"
        todo TODO_APACHE "$text" "${fix[@]}"
    done
}

f2b_running() { have fail2ban-client && fail2ban-client ping >/dev/null 2>&1; }
f2b_jails_active() {
    local j status
    status=$(fail2ban-client status 2>/dev/null) || return 1
    for j in $(bundle_jails); do
        [[ $status == *"$j"* ]] || return 1
    done
}

step_start() {
    step "start: watcher and fail2ban"
    if [ -n "$ROOT" ]; then say skipped "--root: starts nothing"; return 0; fi
    if f2b_running; then
        if [ "$F2B_BROKEN" = 1 ]; then
            warn "fail2ban keeps its old configuration until the error above is fixed"
            [ "$F2B_FOREIGN" = 1 ] && todo TODO_START "Then load the modsec-tools jails:" "fail2ban-client reload"
        elif [ "$F2B_CHANGED" = 1 ] || ! f2b_jails_active; then
            fail2ban-client reload >/dev/null && say reloaded "fail2ban ($(bundle_jails | paste -sd, -))" \
                || fail "fail2ban-client reload failed"
        else
            say unchanged "fail2ban is running with the jails $(bundle_jails | paste -sd, -)"
        fi
    fi
    if ! systemd_running; then
        say skipped "systemd is not running here: nothing was started (the commands are listed at the end)"
        local start=()
        f2b_running || start+=("fail2ban-client -x start")
        start+=("modsec-tools watch --log-target $(dirname "${SET[event_log]}")/watch.log")
        todo TODO_START "Start $(f2b_running || echo 'fail2ban and ')the watcher (without --foreground it detaches; stop it with: kill \$(cat ${SET[state_dir]}/modsec-tools.lock)):" "${start[@]}"
        return 0
    fi
    if [ "$UNIT_CHANGED" = 1 ]; then
        systemctl daemon-reload
        say reloaded "systemd units"
    fi
    if systemctl is-enabled --quiet modsec-tools.service 2>/dev/null; then
        say unchanged "modsec-tools.service is enabled"
    else
        systemctl enable --quiet modsec-tools.service && say enabled "modsec-tools.service"
    fi
    if [ "$FAILED" = 1 ]; then
        warn "not (re)starting modsec-tools.service: fix the errors above and rerun"
    elif systemctl is-active --quiet modsec-tools.service; then
        if [ "$PKG_CHANGED" = 1 ] || [ "$UNIT_CHANGED" = 1 ]; then
            systemctl restart modsec-tools.service && say restarted "modsec-tools.service" \
                || { fail "modsec-tools.service failed to restart"; journalctl -u modsec-tools.service -n 20 --no-pager >&2 || true; }
        else
            say unchanged "modsec-tools.service is running"
        fi
    else
        if systemctl start modsec-tools.service; then
            say started "modsec-tools.service"
        else
            fail "modsec-tools.service failed to start:"
            journalctl -u modsec-tools.service -n 20 --no-pager >&2 || true
        fi
    fi
    if ! f2b_running; then
        if [ "$F2B_BROKEN" = 1 ]; then
            warn "not starting fail2ban: its configuration test failed"
            [ "$F2B_FOREIGN" = 1 ] && todo TODO_START "Then start fail2ban:" "systemctl restart fail2ban"
        elif systemctl start fail2ban.service; then
            say started "fail2ban.service"
        else
            fail "fail2ban.service failed to start (journalctl -u fail2ban)"
        fi
    fi
}
PKG_CHANGED=0

# ----------------------------------------------------------------------------- uninstall --
uninstall() {
    detect_os
    local manifest=""
    # The manifest is in state_dir: from the configuration if modsec-tools still runs,
    # else the default.
    if [ -x "$(R "$VENV")/bin/python" ] && [ -f "$(R "$CONFIG")" ] \
            && mt config show --config "$(R "$CONFIG")" > "$TMP/settings" 2>/dev/null; then
        manifest=$(sed -n 's/^state_dir = //p' "$TMP/settings")/$MANIFEST_NAME
    fi
    [ -n "$manifest" ] && [ -f "$(R "$manifest")" ] || manifest=$DEFAULT_STATE_DIR/$MANIFEST_NAME
    [ -f "$(R "$manifest")" ] || die "no install manifest at $(R "$manifest"): nothing to uninstall"
    load_manifest "$(R "$manifest")"

    step "stop: watcher"
    if systemd_running; then
        if systemctl is-active --quiet modsec-tools.service; then
            systemctl stop modsec-tools.service && say stopped "modsec-tools.service"
        fi
        if systemctl is-enabled --quiet modsec-tools.service 2>/dev/null; then
            systemctl disable --quiet modsec-tools.service && say disabled "modsec-tools.service"
        fi
    elif live; then
        local lock=$DEFAULT_STATE_DIR/modsec-tools.lock pid
        if [ -f "$lock" ] && ! flock -n "$lock" true 2>/dev/null; then
            pid=$(cat "$lock")
            kill -TERM "$pid" 2>/dev/null && say stopped "watcher pid $pid"
            flock -w 60 "$lock" true 2>/dev/null || warn "pid $pid did not stop within 60 s"
        fi
    else
        say skipped "--root: stops nothing"
    fi

    step "remove: files install.sh installed"
    local name target type
    for name in $(printf '%s\n' "${!OLD_TYPE[@]}" | sort); do
        type=${OLD_TYPE[$name]}
        target=$(R "$name")
        case $type in
            file|once)
                if [ ! -e "$target" ]; then continue; fi
                if [ "$(sha "$target")" = "${OLD_SHA[$name]}" ]; then
                    rm -f "$target"; say removed "$name"
                else
                    say kept "$name (modified since install: yours now)"
                    if [ "$name" = "$JAIL_LOCAL" ]; then
                        warn "$name still enables the modsec jails, whose filter is gone: fail2ban will refuse to start until you remove it or set enabled = false"
                    fi
                fi ;;
            link) [ -L "$target" ] && { rm -f "$target"; say removed "$name"; } ;;
            tree) [ -d "$target" ] && { rm -rf "$target"; say removed "$name"; } ;;
        esac
    done
    for name in $(printf '%s\n' "${!OLD_TYPE[@]}" | sort); do
        case ${OLD_TYPE[$name]} in
            data) say kept "$name (data)" ;;
            acl) say kept "POSIX ACL of group ${OLD_SHA[$name]} on $name (Apache may rely on it; remove with: setfacl -R -x g:${OLD_SHA[$name]} -x d:g:${OLD_SHA[$name]} $name)" ;;
        esac
    done
    for name in "${!OLD_TYPE[@]}"; do
        case $name in
            */zz-modsec-tools.conf) [ -e "$(R "$name")" ] \
                || note "restart Apache: until then it writes the audit log as $name said" ;;
        esac
    done
    [ -e "$(R "$manifest")" ] && { rm -f "$(R "$manifest")"; say removed "$manifest"; }
    # Directories, deepest first, only if empty.
    for name in $(for n in "${!OLD_TYPE[@]}"; do [ "${OLD_TYPE[$n]}" = dir ] && echo "$n"; done \
                  | awk -F/ '{print NF "\t" $0}' | sort -rn | cut -f2-); do
        target=$(R "$name")
        [ -d "$target" ] || continue
        if rmdir "$target" 2>/dev/null; then say removed "$name/"
        else say kept "$name/ (not empty)"; fi
    done

    if live; then
        step "reload: systemd and fail2ban"
        systemd_running && systemctl daemon-reload && say reloaded "systemd units"
        if f2b_running; then
            if fail2ban-client -t >/dev/null 2>&1; then
                fail2ban-client reload >/dev/null && say reloaded "fail2ban"
            else
                warn "fail2ban-client -t fails now (see the warnings above): fail2ban was not reloaded"
            fi
        fi
        if [ -n "${OLD_TYPE[$SYSCTL]:-}" ]; then
            note "fs.inotify.max_user_watches keeps its current value until the next boot"
        fi
    fi
    echo "modsec-tools uninstalled. Data kept: ${DEFAULT_STATE_DIR}, /var/log/modsec-tools, and the storage tree unless it was empty."
}

# ----------------------------------------------------------------------------- main -------
main() {
    [ -n "$ROOT" ] && echo "install.sh: staging into $ROOT"
    if [ "$UNINSTALL" = 1 ]; then
        uninstall
        [ "$FAILED" = 0 ] || exit 1
        exit 0
    fi
    step_preflight
    # Earlier manifest: from the default state_dir (or the configured one, after reading it).
    load_manifest "$(R "$DEFAULT_STATE_DIR/$MANIFEST_NAME")"
    step_deps
    local before=$CHANGED
    step_python
    [ "$CHANGED" = "$before" ] || PKG_CHANGED=1
    before=$CHANGED
    step_fail2ban
    step_config
    read_settings
    if [ "$MANIFEST" != "$DEFAULT_STATE_DIR/$MANIFEST_NAME" ]; then
        load_manifest "$(R "$MANIFEST")"
    fi
    step_modsecurity
    check_detected_paths
    step_dirs
    step_acl
    step_jails
    [ "$CHANGED" = "$before" ] || F2B_CHANGED=1
    step_system
    step "manifest"
    remove_obsolete
    write_manifest
    step_check
    step_start
    echo
    if [ "$FAILED" = 1 ]; then
        echo "install.sh: finished WITH ERRORS (see above)."
        print_todo
        exit 1
    fi
    if [ "$CHANGED" = 0 ]; then
        echo "install.sh: done: everything was already in place (unchanged)."
    else
        echo "install.sh: done: $CHANGED change(s)."
    fi
    print_todo
    if live; then
        echo "Then: modsec-tools config check; fail2ban-client status modsec; tail -f ${SET[event_log]}"
    fi
}

main
