"""Validates Kubernetes objects against the schemas bundled in kubernetes-validate, strictly
(unknown fields are errors), for several Kubernetes versions.

Usage: validate_schemas.py --versions 1.33.0,1.37.0 FILE...

Prints one line per object that fails a version, then `objects=N valid=V`, where an object
is valid when it passes every version. Exits 1 when V < N.
"""

import argparse
import sys

import kubernetes_validate.utils as kv


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    versions = args.versions.split(",")
    objects = valid = 0
    for path in args.files:
        for resource in kv.resources_from_file(path):
            if not resource:
                continue
            objects += 1
            name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
            ok = True
            for version in versions:
                try:
                    kv.validate(resource, version, strict=True)
                except kv.ValidationError as e:
                    ok = False
                    where = ".".join(str(p) for p in e.absolute_path)
                    print(f"INVALID {path}: {name} (Kubernetes {version}) at {where or '<root>'}: {e.message}")
                except (kv.SchemaNotFoundError, kv.InvalidSchemaError, kv.VersionNotSupportedError) as e:
                    ok = False
                    print(f"INVALID {path}: {name} (Kubernetes {version}): {e.message if hasattr(e, 'message') else e}")
            valid += ok
    print(f"objects={objects} valid={valid}")
    return 0 if valid == objects else 1


if __name__ == "__main__":
    sys.exit(main())
