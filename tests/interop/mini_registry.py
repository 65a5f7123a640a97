#!/usr/bin/env python3
"""A minimal in-memory server for the Confluent Schema Registry REST API: only what the
interop test's clients call (register under a subject, look up by id, subject versions).

It is the fallback when no real registry runs (SCHEMA_REGISTRY_URL unset): Karapace is not
installable from PyPI (see docs/operations.md, "Schema registry interop"). The decoding under
test is Confluent's own AvroDeserializer; the registry only stores schema text.

usage: mini_registry.py PORT_FILE   (binds 127.0.0.1 on a free port, writes it to PORT_FILE)
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
SCHEMAS = {}    # id -> schema text
SUBJECTS = {}   # subject -> [id, ...] (versions in order)
CT = "application/vnd.schemaregistry.v1+json"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CT)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            schema = body.get("schema")
            if not isinstance(schema, str):
                return self.reply(422, {"error_code": 42201, "message": "schema missing"})
            try:
                canonical = json.dumps(json.loads(schema), sort_keys=True)
            except ValueError:
                return self.reply(422, {"error_code": 42201, "message": "invalid schema"})
            with LOCK:
                found = next((i for i, s in SCHEMAS.items()
                              if json.dumps(json.loads(s), sort_keys=True) == canonical), None)
                if found is None:
                    found = len(SCHEMAS) + 1
                    SCHEMAS[found] = schema
                versions = SUBJECTS.setdefault(parts[1], [])
                if found not in versions:
                    versions.append(found)
            return self.reply(200, {"id": found})
        self.reply(404, {"error_code": 404, "message": "not found"})

    def do_GET(self):
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        with LOCK:
            if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
                schema = SCHEMAS.get(int(parts[2]))
                if schema is None:
                    return self.reply(404, {"error_code": 40403, "message": "Schema not found"})
                return self.reply(200, {"schema": schema})
            if parts == ["subjects"]:
                return self.reply(200, sorted(SUBJECTS))
            if len(parts) == 4 and parts[0] == "subjects" and parts[2] == "versions":
                versions = SUBJECTS.get(parts[1])
                if not versions:
                    return self.reply(404, {"error_code": 40401, "message": "Subject not found"})
                index = len(versions) if parts[3] == "latest" else int(parts[3])
                sid = versions[index - 1]
                return self.reply(200, {"subject": parts[1], "version": index, "id": sid,
                                        "schema": SCHEMAS[sid]})
        self.reply(404, {"error_code": 404, "message": "not found"})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
