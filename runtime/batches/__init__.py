"""/v1/files and /v1/batches: OpenAI's Files and Batch APIs, run by the gateway itself.

    POST GET  /v1/files                    upload (multipart, purpose "batch"); list
    GET  DELETE  /v1/files/{id}            the file object; deleted
    GET  /v1/files/{id}/content            its bytes
    POST GET  /v1/batches                  created from an uploaded file; list
    GET  /v1/batches/{id}                  the batch, its request_counts
    POST /v1/batches/{id}/cancel           cancelling, then cancelled

A batch is not handed to a provider's batch API: its input file is checked when the
batch is created (runtime/batches/input.py; a bad file makes a ``failed`` batch with
line errors), then each line is answered in the background (runtime/batches/runner.py)
through the same request path a POST to its endpoint takes, as the key that created the
batch: Cedar, limits and budgets, routing and fallbacks, billing, the spend ledger (each
record's ``batch``), metrics and the access log (``"batch": id``). The answers become
the batch's output file (2xx) and error file (the rest), files like the uploads.

Files and batches are their team's (any key of the team finds them; a key without a
team, its own): others get a 404, admin keys find all. Their records are in the store
(runtime/store/batches.py: ``aigw-batches.sqlite`` beside ``aigw.sqlite``, or Redis),
the files' bytes in ``settings.files_dir``: with Redis, a folder every replica mounts.
"""

from .api import BATCH_ENDPOINTS, batch_doc, batch_routes
from .input import check_input
from .runner import BatchRunner, LineAnswer, LineCall

__all__ = ["BATCH_ENDPOINTS", "BatchRunner", "LineAnswer", "LineCall", "batch_doc",
           "batch_routes", "check_input"]
