"""A kernel HTTPS server for the tests: Python's own http.server behind ssl, HTTP/1.1.

    https_server.py --bind ADDR --cert PEM --directory DIR

PEM holds the key and the certificate chain. Prints "port N" once it listens, then serves until killed.
"""

import argparse
import functools
import http.server
import ssl
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--bind", required=True)
ap.add_argument("--cert", required=True)
ap.add_argument("--directory", required=True)
args = ap.parse_args()

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(args.cert)


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"


handler = functools.partial(Handler, directory=args.directory)
server = http.server.ThreadingHTTPServer((args.bind, 0), handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"port {server.server_address[1]}", flush=True)
sys.stdout.close()
server.serve_forever()
