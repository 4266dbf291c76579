# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, not run, once ROOT is set): the
# binaries under test, free loopback ports and waiting for a broker to
# listen.

# The release build unless PETREL_BIN / BENCH_BIN name others. PETREL_BIN is
# not passed on: petrel reads PETREL_* variables as settings and refuses
# unknown ones.
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PETREL_BIN=${PETREL_BIN:-$TARGET_DIR/release/petrel}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/petrel}
export -n PETREL_BIN

# Any socket on the port (listening or not) makes it unusable. Ports are
# picked below Linux's default ephemeral range (32768-60999).
port_free() { ! ss -Htan "sport = :$1" 2>/dev/null | grep -q .; }
listening() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
free_port() {
    local p=$(( 20000 + RANDOM % 12000 ))
    while ! port_free "$p"; do p=$(( p + 1 )); done
    echo "$p"
}
wait_listening() { # port pid
    for _ in $(seq 1 100); do
        kill -0 "$2" 2>/dev/null || return 1
        listening "$1" && return 0
        sleep 0.1
    done
    return 1
}
