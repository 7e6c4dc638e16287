#!/usr/bin/env bash
# Build socketman as one static musl binary per target, without Docker.
#
#   scripts/build-static.sh [--no-install] TARGET...
#
# TARGET is a Rust triple:
#   x86_64-unknown-linux-musl        musl-gcc (Debian musl-tools)
#   aarch64-unknown-linux-musl       zig cc through cargo-zigbuild (PyPI: ziglang, cargo-zigbuild)
#   armv7-unknown-linux-musleabihf   zig cc through cargo-zigbuild
#   mipsel-unknown-linux-musl        tier 3: nightly, -Z build-std, zig cc (see docs/INSTALL.md)
#   mips-unknown-linux-musl          tier 3: nightly, -Z build-std, zig cc (see docs/INSTALL.md)
#
# Always `--release --features vendored-ssl`: OpenSSL 3 is built from source (openssl-src) and
# linked statically, once, for both paho (MQTT TLS) and ureq (HTTPS). OPENSSL_STATIC=1 makes
# paho-mqtt-sys ask for the static libssl/libcrypto too.
#
# Missing pieces are installed (apt-get, rustup, pip) unless --no-install is given.
# For each target it prints the binary's path, size and `file` output, and fails when the
# binary has a program interpreter or NEEDED entries, i.e. is not static.
# Output: target/<triple>/release/socketman (cargo keeps one directory per triple).
# Environment: SOCKETMAN_BUILD_BINS (default "socketman"), CARGO_BUILD_JOBS as usual.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

INSTALL=1
TARGETS=()
for a in "$@"; do
    case "$a" in
        --no-install) INSTALL=0 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build-static: unknown option $a" >&2; exit 2 ;;
        *) TARGETS+=("$a") ;;
    esac
done
if [ ${#TARGETS[@]} -eq 0 ]; then
    echo "usage: scripts/build-static.sh [--no-install] TARGET..." >&2
    exit 2
fi

# Pinned so a fresh CI machine builds with what was tested.
ZIG_VERSION=${ZIG_VERSION:-0.17.1}
ZIGBUILD_VERSION=${ZIGBUILD_VERSION:-0.24.0}
BINS=${SOCKETMAN_BUILD_BINS:-socketman}

log() { echo "build-static: $*" >&2; }
die() { echo "build-static: error: $*" >&2; exit 1; }

APT_UPDATED=0
apt_get_install() { # apt_get_install PACKAGE...
    [ "$INSTALL" = 1 ] || die "missing: $* (apt-get install $*)"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install $* by hand"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        $sudo apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}
apt_install() { # apt_install CMD PACKAGE... — install PACKAGEs when CMD is missing
    local cmd=$1; shift
    command -v "$cmd" >/dev/null 2>&1 || apt_get_install "$@"
}

ensure_zig() {
    if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! { command -v zig >/dev/null 2>&1 || python3 -m ziglang version >/dev/null 2>&1; }; then
        [ "$INSTALL" = 1 ] || die "zig / cargo-zigbuild missing (pip install ziglang==$ZIG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION)"
        apt_install python3 python3 python3-pip
        python3 -m pip --version >/dev/null 2>&1 || apt_get_install python3-pip
        log "pip install ziglang==$ZIG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION"
        python3 -m pip install -q "ziglang==$ZIG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" >&2 \
            || python3 -m pip install -q --break-system-packages "ziglang==$ZIG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION" >&2
        hash -r
        command -v cargo-zigbuild >/dev/null 2>&1 || die "cargo-zigbuild not on PATH after pip install (add python's bin dir to PATH)"
    fi
}

ensure_target() { # ensure_target TOOLCHAIN TRIPLE
    local tc=$1 triple=$2
    if [ "$triple" = tier3 ]; then
        rustup toolchain list | grep -q "^$tc" || { [ "$INSTALL" = 1 ] && rustup toolchain install --profile minimal "$tc" >&2; }
        rustup +"$tc" component list --installed | grep -q '^rust-src' \
            || { [ "$INSTALL" = 1 ] || die "rust-src missing for $tc"; rustup +"$tc" component add rust-src >&2; }
        return
    fi
    rustup +"$tc" target list --installed | grep -qx "$triple" && return 0
    [ "$INSTALL" = 1 ] || die "rust target $triple missing (rustup target add $triple)"
    local out
    if ! out=$(RUST_BACKTRACE=0 rustup +"$tc" target add "$triple" 2>&1); then
        echo "$out" | grep -v '^ *[0-9]*:\|^ *at \|^Stack backtrace' | head -n 8 >&2
        return 1
    fi
}

# musl-gcc has no kernel headers; OpenSSL wants <linux/...>. Give it Debian's, and only those,
# after musl's own include directory (never glibc's headers).
kernel_headers_dir() {
    local arch=$1
    local dir="$ROOT/target/kernel-headers-$arch"
    [ -f /usr/include/linux/mman.h ] || apt_get_install linux-libc-dev
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        ln -sfn /usr/include/linux "$dir/linux"
        ln -sfn /usr/include/asm-generic "$dir/asm-generic"
        ln -sfn "/usr/include/$arch-linux-gnu/asm" "$dir/asm"
    fi
    echo "$dir"
}

# Algorithms and protocols socketman never uses, left out of OpenSSL to save flash
# (the binary is for routers with 8-16 MiB of flash). Kept: TLS 1.2/1.3, AES-GCM,
# ChaCha20-Poly1305, RSA, EC (P-256/384, X25519, Ed25519), DH, DSA, DES (PKCS#12), OCSP.
# Every name here is also a cfg the openssl crate knows or a part it does not bind.
OPENSSL_TRIM="no-aria no-argon2 no-bf no-cast no-cmp no-cms no-dtls no-md4 no-mdc2 no-ml-dsa
 no-ml-kem no-ocb no-rc2 no-rc4 no-rmd160 no-scrypt no-siphash no-siv no-slh-dsa no-sm2 no-sm3
 no-sm4 no-srp no-srtp no-ts no-whirlpool"
OPENSSL_TRIM=$(echo $OPENSSL_TRIM)

# openssl_perl NAME ARG...: a perl for openssl-src's `./Configure` (OPENSSL_SRC_PERL) that
# appends ARGs, since openssl-src has no switch for Configure options. Prints its path.
openssl_perl() {
    local name=$1; shift
    local p="$ROOT/target/openssl-configure-$name"
    mkdir -p "$ROOT/target"
    cat >"$p" <<PERL
#!/bin/sh
# Written by scripts/build-static.sh: ./Configure with extra options, anything else unchanged.
if [ "\$1" = ./Configure ]; then exec perl "\$@" $*; fi
exec perl "\$@"
PERL
    chmod +x "$p"
    echo "$p"
}

check_static() { # check_static BINARY
    local bin=$1
    if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
        die "$bin has a program interpreter: not static"
    fi
    if readelf -dW "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
        die "$bin needs shared libraries: $(readelf -dW "$bin" | grep NEEDED | tr -s ' ' | tr '\n' ' ')"
    fi
    file -b "$bin" | grep -Eq 'statically linked|static-pie linked' || die "$bin: file does not call it static: $(file -b "$bin")"
}

apt_install cmake cmake
apt_install make make
apt_install perl perl
apt_install file file
apt_install readelf binutils
command -v rustup >/dev/null 2>&1 || die "rustup is required (https://rustup.rs)"

bin_args=()
for b in $BINS; do bin_args+=(--bin "$b"); done

# In CFLAGS so that cargo rebuilds OpenSSL (its build script watches CFLAGS_<target>)
# whenever the Configure options change.
trim_key="-DSOCKETMAN_OPENSSL_TRIM=$(echo "$OPENSSL_TRIM" | cksum | cut -d' ' -f1)"

for triple in "${TARGETS[@]}"; do
    start=$(date +%s)
    env_vars=(OPENSSL_STATIC=1)
    tv=${triple//-/_}
    case "$triple" in
        x86_64-unknown-linux-musl)
            apt_install musl-gcc musl-tools
            ensure_target stable "$triple"
            kdir=$(kernel_headers_dir x86_64)
            env_vars+=("CC_$tv=musl-gcc" "CFLAGS_$tv=-idirafter $kdir $trim_key"
                       "OPENSSL_SRC_PERL=$(openssl_perl trim $OPENSSL_TRIM)")
            cmd=(cargo build)
            ;;
        aarch64-unknown-linux-musl|armv7-unknown-linux-musleabihf)
            ensure_zig
            env_vars+=("CFLAGS_$tv=$trim_key" "OPENSSL_SRC_PERL=$(openssl_perl trim $OPENSSL_TRIM)")
            if ensure_target stable "$triple"; then
                cmd=(cargo zigbuild)
            else
                # No prebuilt std for this target from the rustup mirror (seen for armv7
                # here: 404): build std from source with nightly, as for tier 3, and let zig
                # supply musl's start files.
                log "no prebuilt std for $triple: nightly -Z build-std instead"
                ensure_target nightly tier3
                env_vars+=("CARGO_TARGET_${tv^^}_RUSTFLAGS=-C target-feature=+crt-static -C link-self-contained=no")
                cmd=(cargo +nightly zigbuild -Z build-std=std,panic_abort)
            fi
            ;;
        mipsel-unknown-linux-musl|mips-unknown-linux-musl)
            ensure_zig
            ensure_target nightly tier3
            # OpenSSL 3 uses __atomic_is_lock_free, which zig's compiler-rt lacks on 32-bit MIPS:
            # take OpenSSL's lock-based fallback. Non-PIE: static-pie crashes at start-up there.
            # link-self-contained=no: a tier-3 target ships no crt1.o/libc.a of Rust's own;
            # zig links its musl crt objects and libunwind instead.
            # OpenSSL without assembly: its MIPS assembly (perlasm o32: AES, SHA, Poly1305,
            # bignum) is mis-assembled by clang's integrated assembler, i.e. by zig cc; TLS
            # then fails with "bad record mac" or crashes in the handshake. The C code is right.
            # -DOPENSSL_NO_ASM also makes cargo rebuild an OpenSSL built with assembly.
            env_vars+=("OPENSSL_SRC_PERL=$(openssl_perl trim-noasm $OPENSSL_TRIM no-asm)"
                       "CFLAGS_$tv=-DBROKEN_CLANG_ATOMICS -DOPENSSL_NO_ASM $trim_key"
                       "CARGO_TARGET_${tv^^}_RUSTFLAGS=-C relocation-model=static -C target-feature=+crt-static -C link-self-contained=no")
            cmd=(cargo +nightly zigbuild -Z build-std=std,panic_abort)
            ;;
        *) die "unsupported target $triple" ;;
    esac
    log "building $triple: ${env_vars[*]} ${cmd[*]} --release --features vendored-ssl"
    env "${env_vars[@]}" "${cmd[@]}" --release --locked --features vendored-ssl --target "$triple" "${bin_args[@]}" >&2
    end=$(date +%s)
    for b in $BINS; do
        bin="$ROOT/target/$triple/release/$b"
        [ -x "$bin" ] || die "$bin was not built"
        check_static "$bin"
        echo "$triple: $bin"
        echo "  size: $(stat -c %s "$bin") bytes ($(( ($(stat -c %s "$bin") + 1023) / 1024 )) KiB)"
        echo "  file: $(file -b "$bin")"
        echo "  build time: $((end - start)) s"
    done
done
