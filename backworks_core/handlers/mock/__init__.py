"""`handler: mock`: recorded examples, answered by request matching (written by capture, editable by hand).

```yaml
config:
  mock:
    examples:
      - when: {path: {id: "7"}, query: {page: "2"}, headers: {X-Tenant: acme}, body: {kind: a}}
        status: 200
        headers: {Content-Type: application/json}
        body: {id: 7, name: Ada}        # a JSON value, or a string (sent as is); or body_base64: "..."
        latency: 0.012                  # how long the recorded answer took (optional)
      - status: 404                     # no `when`: the fallback
        body: {error: not found}
    schema: {...}                       # optional JSON Schema of the bodies (informational)
    passthrough: false
    replay_latency: false
```

Decisions where the blueprint format is silent:

Matching
  Every condition an example's `when` gives must hold:
  - `path`: each named path parameter equals the given value, compared as strings (`id: 7` and
    `id: "7"` are the same). A name the endpoint's path template does not have is a build error.
  - `query`: each given key has exactly that value; a list gives the key's values in order
    (`tag: [a, b]` matches `?tag=a&tag=b`, not `?tag=b&tag=a`). A string is a list of one, so
    `tag: a` does not match `?tag=a&tag=b`. Keys the example does not name are not looked at.
  - `headers`: names case-insensitive, values exact (a header sent several times matches when one
    of its values, or all of them joined with ", ", is the given value); null: the header is absent.
  - Redacted values (`path`, `query`, `headers`): a `[REDACTED:<12 hex>]` placeholder, whole or
    inside the value, matches the text with that fingerprint (`value_matches`), so a recording
    redacted on the way answers the request it came from; a bare `[REDACTED]` matches any value.
  - `body`: the request body parsed as JSON (whatever its Content-Type) contains the given JSON:
    objects recursively (the request may have more keys), arrays and scalars equal (`true` is not
    `1`, `1` is `1.0`). A body that is not JSON matches no body condition.
  `examples_file` holds more examples, one JSON object per line, read as if they followed
  `examples` (capture writes the answers beyond `max_examples` there).
  The most specific matching example answers: specificity is the number of conditions, each
  path parameter, query key, header and body leaf counting one (an array or an empty object is
  one leaf). A tie goes to the example that comes first in the file.

Sequences
  Examples whose `when` are the same (after normalisation: header names lower-cased, numbers in
  `path`/`query` as strings, order of keys ignored) are one sequence: the requests they match get
  them in file order, one each, and once the last has answered it answers every further request,
  as mitmproxy's server replay does when it does not reuse flows (`server_replay_reuse` off) until
  it runs out. Fallbacks are a sequence in the same way. The position is kept by the handler
  instance: a blueprint reload starts every sequence again. A request takes its step before any
  await, so concurrent requests never get the same step, and a request cancelled while it waits
  out a replayed latency has still used its step.

No match
  The fallback answers (an example without `when`, or with an empty one); without one, the
  standard Backworks 404 `{error, status, request_id}`; with `passthrough: true` the request goes
  on, unchanged but for its X-Request-ID and `traceparent` (as every request Backworks passes to
  an upstream carries them), to its own URL: in reverse mode that is the real upstream, in
  regular mode the server a proxied client asked for. A request sent to the gateway's own
  address (regular mode, no upstream) cannot pass through: it is answered 502, never sent to
  the proxy itself. The flow comment says `mock=example-N` (N: the index in `examples`),
  `mock=fallback` or `mock=passthrough`.

Answers
  Bodies are literal data: never template-rendered, so a recorded `{{now}}` stays text. A JSON
  value body is sent as compact JSON (or as its `json_layout` says: indented, spaced, `\\u`
  escapes, a final newline) with Content-Type application/json, a string as its UTF-8
  bytes with text/plain; charset=utf-8, `body_base64` as the decoded bytes with
  application/octet-stream, each unless the example's headers set a Content-Type or it says
  `add_content_type: false` (an answer recorded without one). `body: null`
  or no body is an empty body. A string is sent byte for byte: the capture writes a recorded
  body as a string (its exact text) unless compact JSON gives back the same bytes. A header
  value may be a list (Set-Cookie sent twice). Headers are literal too. Content-Encoding is
  sent with `body_base64` (bytes still encoded: the capture stores bodies decoded and writes
  it only for bytes it could not decode) or without a body, and dropped with `body`, which is
  decoded text or JSON by definition. Content-Length is computed; the recorded Content-Length,
  Transfer-Encoding, the hop-by-hop headers and X-Request-ID (the answer carries this
  request's id) are dropped from the example's headers. 1xx, 204 and 304 cannot carry a body
  and get no Content-Length. HEAD gets the GET answer's headers, its Content-Length included,
  without the body; an example without a body (a recorded HEAD answer) that gives a
  Content-Length announces that one to HEAD.

Latency
  With `replay_latency: true` an example's `latency` × `latency_factor` is waited out before
  answering, at most `max_latency` (60 s at most); the wait ends at once when the client goes.

Beyond replay
  Request validation (`validate`, `request_body`), `Prefer: code=…/example=…`, answers
  synthesised for unrecorded path values (`unrecorded`), the latency keys, and their
  blueprint-wide defaults in `server.mock`: backworks_core.handlers.mock_features. Order: a
  refused request (415/400/422) first, then a preferred example, then the collection state
  (`state: collections`, backworks_core.handlers.mock_state), then matching as above.

Modules
  `config` (the keys above, validated at load), `matching` (`when`, compiled to `Conditions`),
  `answers` (an example's answer as bytes), `handler` (`MockHandler`: a request's way through,
  the sequences' positions, passthrough).
"""

from __future__ import annotations


from backworks_core.handlers.mock.config import MockConfig, check_path_params
from backworks_core.handlers.mock.handler import MockHandler

__all__ = ["MockConfig", "MockHandler", "check_path_params"]
