# -*- test-case-name: tests.admin -*-
"""
txgate's admin console: a JSON API and server-rendered HTML pages over the
live sessions, services, real servers and metrics of every worker.

L{txgate.admin.views} is the pure part (filtering, sorting, rendering to
bytes); L{txgate.admin.web} is the twisted.web glue (routes, authentication,
errors) and builds the site with L{txgate.admin.web.admin_site}.
"""
