"""The web pages for people: reviewers judge queued answers (reading their text through the audited reveal),
analysts read the numbers. Server-rendered (Jinja2), no build step; forms carry a CSRF token; sessions live in the
server's memory behind an HttpOnly, SameSite=Strict cookie."""
