/* SPDX-License-Identifier: MIT */
/* TLS on a migration's channels (tls_hook.h). */
#include "migration/tls_hook.h"

#include <errno.h>
#include <string.h>

#include "base/clock.h"
#include "io/objects.h"
#include "io/tls.h"

bool kv_mig_tls_on(const struct kv_mig_tls *tls)
{
	return tls && tls->creds[0];
}

/* The credentials for this side, or NULL with err set. */
static const struct kv_tls_creds *side_creds(const struct kv_mig_tls *tls,
					     enum kv_tls_endpoint want,
					     struct kv_error *err)
{
	const struct kv_tls_creds *c =
	    kv_objects_tls_creds(tls->objects, tls->creds, err);

	if (c && kv_tls_creds_endpoint(c) != want) {
		kv_error_set(err, -EINVAL, "tls-creds '%s' has endpoint=%s, but the %s needs endpoint=%s", tls->creds, want == KV_TLS_SERVER ? "client" : "server", want == KV_TLS_SERVER ? "destination" : "source", want == KV_TLS_SERVER ? "server" : "client");
		return NULL;
	}
	return c;
}

int kv_mig_tls_check(const struct kv_mig_tls *tls, bool destination,
		     struct kv_error *err)
{
	if (!kv_mig_tls_on(tls))
		return 0;
	if (!side_creds(tls, destination ? KV_TLS_SERVER : KV_TLS_CLIENT, err))
		return err && err->code ? err->code : -EINVAL;
	if (destination && tls->authz[0] &&
	    !kv_objects_authz(tls->objects, tls->authz, err))
		return err && err->code ? err->code : -EINVAL;
	return 0;
}

struct kv_chan *kv_mig_tls_client_keep(struct kv_chan *c,
				       const struct kv_mig_tls *tls,
				       const char *uri, uint64_t timeout_ms,
				       struct kv_error *err)
{
	struct kv_tls_params p = {
	    .deadline_ns = kv_now_ns() + (timeout_ms ? (int64_t)timeout_ms * 1000000 : KV_MIG_TLS_HANDSHAKE_NS),
	};
	struct kv_uri u;

	if (!c || !kv_mig_tls_on(tls))
		return c;
	p.creds = side_creds(tls, KV_TLS_CLIENT, err);
	if (!p.creds)
		return NULL;
	p.hostname = tls->hostname;
	if (!p.hostname[0] && kv_uri_parse(uri, &u, NULL) == 0 &&
	    u.kind == KV_URI_TCP)
		p.hostname = u.host;
	return kv_tls_wrap(c, &p, err);
}

struct kv_chan *kv_mig_tls_client(struct kv_chan *c,
				  const struct kv_mig_tls *tls,
				  const char *uri, uint64_t timeout_ms,
				  struct kv_error *err)
{
	struct kv_chan *t = kv_mig_tls_client_keep(c, tls, uri, timeout_ms, err);

	if (!t)
		kv_chan_close(c);
	return t;
}

struct kv_chan *kv_mig_tls_server(struct kv_chan *c,
				  const struct kv_mig_tls *tls,
				  int64_t deadline_ns, struct kv_error *err)
{
	struct kv_tls_params p = {.deadline_ns = deadline_ns};
	struct kv_chan *t = NULL;

	if (!c || !kv_mig_tls_on(tls))
		return c;
	p.creds = side_creds(tls, KV_TLS_SERVER, err);
	if (p.creds && tls->authz[0]) {
		p.authz = kv_objects_authz(tls->objects, tls->authz, err);
		if (!p.authz)
			p.creds = NULL;
	}
	if (p.creds)
		t = kv_tls_wrap(c, &p, err);
	if (!t)
		kv_chan_close(c);
	return t;
}
