#!/usr/bin/env bash
# Development and test certificates for petrel's TLS listeners: a private CA,
# a server certificate for localhost signed by it, and a client certificate
# for mutual TLS. Never use these outside development and tests.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: make-dev-certs.sh [options] [DIR]

Writes a development CA, a server certificate (DNS:localhost, IP:127.0.0.1,
IP:::1) and a client certificate into DIR (default: ./dev-certs). Files that
already exist are overwritten, so a rerun yields a fresh, consistent set.

Options (each also settable through the environment variable shown):
  --client-cn CN   subject CN of the client certificate   PETREL_CERT_CLIENT_CN (device-1)
  --days N         validity of every certificate, in days  PETREL_CERT_DAYS (825)
  --expired        also write server-expired.crt, a server certificate for
                   server.key that expired in 2020         PETREL_CERT_EXPIRED=1
  -h, --help       show this help
USAGE
}

client_cn="${PETREL_CERT_CLIENT_CN:-device-1}"
days="${PETREL_CERT_DAYS:-825}"
expired="${PETREL_CERT_EXPIRED:-0}"
dir=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        --client-cn)
            [[ $# -ge 2 ]] || { echo "--client-cn needs a value" >&2; exit 2; }
            client_cn="$2"
            shift 2
            ;;
        --days)
            [[ $# -ge 2 ]] || { echo "--days needs a value" >&2; exit 2; }
            days="$2"
            shift 2
            ;;
        --expired)
            expired=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            echo "unknown option: $1" >&2
            usage >&2
            exit 2
            ;;
        *)
            [[ -z "$dir" ]] || { echo "only one DIR may be given" >&2; exit 2; }
            dir="$1"
            shift
            ;;
    esac
done
dir="${dir:-./dev-certs}"

if ! [[ "$days" =~ ^[1-9][0-9]*$ ]]; then
    echo "--days must be a positive whole number, not '$days'" >&2
    exit 2
fi
# The CN goes into a -subj string, where '/' starts a new attribute.
if [[ -z "$client_cn" || "$client_cn" == */* ]]; then
    echo "--client-cn must be non-empty and contain no '/', not '$client_cn'" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "openssl is not installed" >&2; exit 1; }

mkdir -p "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A config of our own, so the output does not depend on the machine's
# openssl.cnf. The extensions are what webpki (rustls) insists on: a CA that
# says it is one, and leaf certificates with a SAN and the right usage.
cat >"$work/openssl.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no

[dn]

[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

# Only used by 'openssl ca' for the expired certificate: of the x509
# commands, only it can set an arbitrary notBefore.
[ca]
default_ca = expired_ca

[expired_ca]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
default_md = sha256
policy = any_subject
unique_subject = no
copy_extensions = none

[any_subject]
organizationName = optional
commonName = supplied
CNF

# openssl chatters on stderr even when it succeeds: keep that quiet, but
# show it when a step fails.
run() {
    if ! "$@" 2>"$work/stderr"; then
        cat "$work/stderr" >&2
        echo "failed: $*" >&2
        exit 1
    fi
}

# P-256 keys: quick to generate and accepted by rustls, OpenSSL and
# mosquitto alike. Written 0600 even when an older file had looser modes.
new_key() {
    (umask 077 && run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1")
    chmod 600 "$1"
}

# Signs $work/$1.csr with the CA into $2, using extension section $3.
sign() {
    run openssl x509 -req -in "$work/$1.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -days "$days" -sha256 -extfile "$work/openssl.cnf" -extensions "$3" \
        -out "$2"
}

# Each run's CA gets a name of its own: verifiers find the issuer by name,
# so a certificate from another run's CA would otherwise be reported as a
# bad signature instead of an unknown issuer.
ca_name="petrel development CA $(openssl rand -hex 4)"
new_key "$dir/ca.key"
run openssl req -config "$work/openssl.cnf" -new -x509 -key "$dir/ca.key" -sha256 \
    -subj "/O=petrel development/CN=$ca_name" -days "$days" \
    -extensions ca_ext -out "$dir/ca.crt"

new_key "$dir/server.key"
run openssl req -config "$work/openssl.cnf" -new -key "$dir/server.key" \
    -subj "/O=petrel development/CN=localhost" -out "$work/server.csr"
sign server "$dir/server.crt" server_ext

new_key "$dir/client.key"
run openssl req -config "$work/openssl.cnf" -new -key "$dir/client.key" \
    -subj "/O=petrel development/CN=$client_cn" -out "$work/client.csr"
sign client "$dir/client.crt" client_ext

written=(
    "ca.crt|development CA certificate, CN=$ca_name (the clients' trust anchor)"
    "ca.key|development CA private key"
    "server.crt|server certificate for localhost, 127.0.0.1 and ::1"
    "server.key|server private key"
    "client.crt|client certificate, CN=$client_cn"
    "client.key|client private key"
)

if [[ "$expired" == 1 ]]; then
    : >"$work/index.txt"
    run openssl rand -hex -out "$work/serial" 16
    run openssl ca -batch -config "$work/openssl.cnf" -cert "$dir/ca.crt" -keyfile "$dir/ca.key" \
        -in "$work/server.csr" -out "$dir/server-expired.crt" -notext \
        -startdate 20200101000000Z -enddate 20200102000000Z -extensions server_ext
    written+=("server-expired.crt|server certificate for server.key, expired on 2020-01-02")
else
    # A leftover from an earlier --expired run would belong to the old key.
    rm -f "$dir/server-expired.crt"
fi

echo "wrote to $dir:"
for entry in "${written[@]}"; do
    printf '  %-19s %s\n' "${entry%%|*}" "${entry#*|}"
done
