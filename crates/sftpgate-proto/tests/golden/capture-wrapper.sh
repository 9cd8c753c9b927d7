#!/bin/sh
# Stands in for sftp-server under `sftp -D`: records both directions of the SFTP byte stream
# while OpenSSH's own sftp-server does the work. $CAPTURE_DIR says where the two files go.
dir=${CAPTURE_DIR:?set CAPTURE_DIR}
exec tee "$dir/client-to-server.bin" | /usr/lib/openssh/sftp-server | tee "$dir/server-to-client.bin"
