#!/bin/sh
# gen-certs.sh: certificates for the compose demo, made with openssl.
#
#   ./gen-certs.sh [DIR]        (default: ./certs next to this script)
#
# Writes into DIR:
#   ca.crt, ca.key            a private demo CA, valid 2 years; give ca.crt to clients (curl --cacert)
#   mailgate.crt, .key        what mailgate presents to clients: localhost, 127.0.0.1, ::1, mailgate
#   dovecot.crt, .key         what the Dovecot backend presents to mailgate: dovecot
#
# Existing files are kept (delete DIR to start over), so running it twice is
# harmless and certificates clients already trust stay the same.
#
# DEMO ONLY: the keys are made readable by everyone (0644) because the
# mailgate container runs as the image's nonroot user (uid 65532), which does
# not own files created on the host. In production, give the key to the user
# mailgate runs as, mode 0600, or use ACME (tls.acme).
set -eu

dir=${1:-"$(dirname "$0")/certs"}
command -v openssl >/dev/null 2>&1 || { echo "gen-certs.sh: openssl is required (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"

if [ ! -s ca.crt ] || [ ! -s ca.key ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 730 \
		-subj "/CN=mailgate compose demo CA" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" \
		-keyout ca.key -out ca.crt 2>/dev/null
	echo "gen-certs.sh: wrote $dir/ca.crt"
fi

# leaf NAME SAN: a server certificate signed by the demo CA.
leaf() {
	name=$1 san=$2
	if [ -s "$name.crt" ] && [ -s "$name.key" ]; then
		return
	fi
	ext=$(mktemp)
	trap 'rm -f "$ext" "$name.csr"' EXIT
	printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" >"$ext"
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
		-subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
	openssl x509 -req -sha256 -days 397 -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
		-extfile "$ext" -out "$name.crt" 2>/dev/null
	rm -f "$ext" "$name.csr"
	trap - EXIT
	echo "gen-certs.sh: wrote $dir/$name.crt"
}

leaf mailgate "DNS:localhost,IP:127.0.0.1,IP:::1,DNS:mailgate"
leaf dovecot "DNS:dovecot"

chmod 0644 ./*.crt mailgate.key dovecot.key
chmod 0600 ca.key
