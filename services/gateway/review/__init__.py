"""The review page: coders sign in with an API key and settle the rows the model routed to review.

    signin        sign in and out (the signed session cookie and CSRF tokens: session)
    home          the key's jobs, the model registry, retraining on the key's decisions (retrain)
    rows          one row of a job's review queue or audit sample (queue), its evidence, the code search
    decisions     a decision on a row; the reviewed result and the corrections file
    coder         code one answer: ranked codes, routing and evidence as the coder types (static/coder.js)
    glance        a job at a glance: status shares, codes by major group, confidence histogram (inline SVG)
    pages         what every page shares: templates, private-page headers, the job a URL names
    descriptions  how jobs and models read to a coder
    static/       review.js, review.css, favicon.svg (and each page's own script and style), mounted at
                  /review/static by the app

Owner-scoped like the API: another key's job answers 404, as a missing one does. Every POST needs the
session's CSRF token. Pages are server-rendered; review.js adds the keyboard and the code search. The app
includes each module's router (services/gateway/app.py); this package re-exports nothing.
"""
