#!/bin/sh
# Seeds the demo user's maildir with one message the first time the volume is
# used, then runs Dovecot in the foreground (its logs go to stderr, which
# `docker compose logs dovecot` shows).
set -eu
maildir=/srv/mail/demo/Maildir
if [ ! -d "$maildir" ]; then
	install -d -o vmail -g vmail -m 0700 /srv/mail/demo "$maildir" "$maildir/cur" "$maildir/new" "$maildir/tmp"
	# A maildir file name only needs to be unique: time.pid.host.
	install -o vmail -g vmail -m 0600 /usr/local/share/mailgate-demo/welcome.eml "$maildir/new/$(date +%s).$$.seed"
fi
exec /usr/sbin/dovecot -F -c /etc/dovecot/dovecot.conf
