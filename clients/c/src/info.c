#define _GNU_SOURCE
/* The info region: one NUL-padded JSON object (docs/PROTOCOL.md), parsed with json-c. Numbers the
 * broker writes as hex strings ("0x140000000") or as JSON numbers are both taken. */
#include "internal.h"

#include <errno.h>
#include <string.h>

static int u64_of(json_object *v, const char *what, uint64_t *out)
{
	if (json_object_is_type(v, json_type_int)) {
		int64_t n = json_object_get_int64(v);
		if (n < 0) return dl_fail(EPROTO, "info region: %s is negative", what);
		*out = (uint64_t)n;
		return 0;
	}
	if (json_object_is_type(v, json_type_string)) {
		const char *s = json_object_get_string(v);
		char *end = NULL;
		errno = 0;
		unsigned long long n = strtoull(s, &end, 0);
		if (!*s || *end || errno || s[0] == '-') return dl_fail(EPROTO, "info region: %s is not a number (\"%.40s\")", what, s);
		*out = n;
		return 0;
	}
	return dl_fail(EPROTO, "info region: %s is not a number", what);
}

static const char *str_of(json_object *o, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string)) return NULL;
	return json_object_get_string(v);
}

/* An optional member: absent or null -> NULL. */
static json_object *opt(json_object *o, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null)) return NULL;
	return v;
}

void dl_free_info(struct devlease *l)
{
	free(l->info_regions);
	free(l->info_isolation);
	free(l->info_faults);
	l->info_regions = NULL;
	l->info_isolation = NULL;
	l->info_faults = NULL;
	if (l->info_json) json_object_put(l->info_json);
	l->info_json = NULL;
	memset(&l->info, 0, sizeof(l->info));
}

static int parse(struct devlease *l, json_object *j)
{
	struct devlease_info *in = &l->info;
	in->kind = str_of(j, "kind");
	in->lease = str_of(j, "lease");
	in->state = str_of(j, "state");
	if (!in->lease || !in->kind || !in->state)
		return dl_fail(EPROTO, "info region does not hold a devlease lease description (kind, lease, state)");
	json_object *v;
	in->deadline_ms = (v = opt(j, "deadline")) ? json_object_get_int64(v) : -1;
	in->queue = (v = opt(j, "queue")) ? json_object_get_int(v) : -1;
	in->vectors = (v = opt(j, "vectors")) ? (unsigned)json_object_get_int(v) : 0;
	if (in->vectors > 2048) return dl_fail(EPROTO, "info region: %u vectors is more than a device has", in->vectors);
	if ((v = opt(j, "iovaWindow"))) {
		json_object *b, *s;
		if (!json_object_object_get_ex(v, "base", &b) || !json_object_object_get_ex(v, "size", &s))
			return dl_fail(EPROTO, "info region: iovaWindow lacks base or size");
		if (u64_of(b, "iovaWindow.base", &in->iova_base) < 0 || u64_of(s, "iovaWindow.size", &in->iova_size) < 0)
			return -EPROTO;
		in->has_iova_window = true;
	}
	if ((v = opt(j, "devmem"))) {
		json_object *b, *s;
		if (!json_object_object_get_ex(v, "offset", &b) || !json_object_object_get_ex(v, "size", &s))
			return dl_fail(EPROTO, "info region: devmem lacks offset or size");
		if (u64_of(b, "devmem.offset", &in->devmem_offset) < 0 || u64_of(s, "devmem.size", &in->devmem_size) < 0)
			return -EPROTO;
		in->has_devmem = true;
	}
	if ((v = opt(j, "regions"))) {
		if (!json_object_is_type(v, json_type_array)) return dl_fail(EPROTO, "info region: regions is not an array");
		size_t n = json_object_array_length(v);
		/* Device-memory granules are regions 10, 11, ... (as src/client/info.ts). */
		if (n > 1024) return dl_fail(EPROTO, "info region: %zu regions is more than a lease has", n);
		l->info_regions = calloc(n ? n : 1, sizeof(*l->info_regions));
		if (!l->info_regions) return dl_fail(ENOMEM, "info region: no memory");
		for (size_t i = 0; i < n; i++) {
			json_object *r = json_object_array_get_idx(v, i), *x, *s, *u;
			if (!json_object_is_type(r, json_type_object) || !json_object_object_get_ex(r, "index", &x) ||
			    !json_object_object_get_ex(r, "size", &s) || !json_object_object_get_ex(r, "unit", &u))
				return dl_fail(EPROTO, "info region: regions[%zu] lacks index, size or unit", i);
			int idx = json_object_get_int(x);
			if (!json_object_is_type(x, json_type_int) || idx < 0 || idx > 10 + 65536)
				return dl_fail(EPROTO, "info region: regions[%zu].index is not a region index", i);
			l->info_regions[i].index = (unsigned)idx;
			if (u64_of(s, "region size", &l->info_regions[i].size) < 0 || u64_of(u, "region unit", &l->info_regions[i].unit) < 0)
				return -EPROTO;
		}
		in->nregions = (unsigned)n;
	}
	in->regions = l->info_regions;
	if ((v = opt(j, "isolation")) && json_object_is_type(v, json_type_object)) {
		size_t n = (size_t)json_object_object_length(v), i = 0;
		l->info_isolation = calloc(n ? n : 1, sizeof(*l->info_isolation));
		if (!l->info_isolation) return dl_fail(ENOMEM, "info region: no memory");
		json_object_object_foreach(v, key, iso)
		{
			if (!json_object_is_type(iso, json_type_object)) continue;
			l->info_isolation[i].name = key;
			l->info_isolation[i].level = str_of(iso, "level") ? str_of(iso, "level") : "unknown";
			l->info_isolation[i].reason = str_of(iso, "reason") ? str_of(iso, "reason") : "";
			i++;
		}
		in->nisolation = (unsigned)i;
	}
	in->isolation = l->info_isolation;
	if ((v = opt(j, "faults")) && json_object_is_type(v, json_type_array)) {
		size_t n = json_object_array_length(v);
		l->info_faults = calloc(n ? n : 1, sizeof(*l->info_faults));
		if (!l->info_faults) return dl_fail(ENOMEM, "info region: no memory");
		for (size_t i = 0; i < n; i++) {
			json_object *f = json_object_array_get_idx(v, i), *x;
			struct devlease_fault *o = &l->info_faults[i];
			o->queue = (x = opt(f, "queue")) ? json_object_get_int(x) : -1;
			o->code = (x = opt(f, "code")) ? (unsigned)json_object_get_int(x) : 0;
			o->name = str_of(f, "name") ? str_of(f, "name") : "";
			if ((x = opt(f, "address")) && u64_of(x, "fault address", &o->address) < 0) return -EPROTO;
		}
		in->nfaults = (unsigned)n;
	}
	in->faults = l->info_faults;
	/* A broker that does not count them (one from before the count) has sent, for all we know, the faults it
	 * lists: the total then grows with the list, and devlease_next_notice reports the list's new records. */
	in->faults_total = in->nfaults;
	if ((v = opt(j, "faultsTotal")) && u64_of(v, "faultsTotal", &in->faults_total) < 0) return -EPROTO;
	if (in->faults_total < in->nfaults)
		return dl_fail(EPROTO, "info region: faultsTotal %llu is less than the %u faults listed",
			       (unsigned long long)in->faults_total, in->nfaults);
	return 0;
}

int dl_parse_info(struct devlease *l, const char *text, size_t len)
{
	size_t n = strnlen(text, len);
	json_tokener *tok = json_tokener_new();
	if (!tok) return dl_fail(ENOMEM, "info region: no memory");
	json_object *j = json_tokener_parse_ex(tok, text, (int)n);
	enum json_tokener_error e = json_tokener_get_error(tok);
	json_tokener_free(tok);
	if (!j || e != json_tokener_success || !json_object_is_type(j, json_type_object)) {
		if (j) json_object_put(j);
		return dl_fail(EPROTO, "info region does not hold a JSON object (%s)", json_tokener_error_desc(e));
	}
	/* Parse beside the current info, which stays in place when the new one is refused. */
	struct devlease old = *l;
	l->info_json = j;
	l->info_regions = NULL;
	l->info_isolation = NULL;
	l->info_faults = NULL;
	memset(&l->info, 0, sizeof(l->info));
	int rc = parse(l, j);
	struct devlease *drop = rc < 0 ? l : &old;
	json_object_put(drop->info_json);
	free(drop->info_regions);
	free(drop->info_isolation);
	free(drop->info_faults);
	if (rc < 0) {
		l->info_json = old.info_json;
		l->info_regions = old.info_regions;
		l->info_isolation = old.info_isolation;
		l->info_faults = old.info_faults;
		l->info = old.info;
		return rc;
	}
	snprintf(l->name, sizeof(l->name), "%s", l->info.lease);
	return 0;
}

int dl_read_info(struct devlease *l)
{
	uint64_t size = 16384;
	/* The region's size from REGION_INFO, bounded: the broker writes at most a few KiB. */
	uint8_t req[32] = { 0 };
	dl_put32(req, 32);
	dl_put32(req + 8, l->info_index);
	struct dl_msg r;
	int rc = dl_call(l, VFIO_USER_DEVICE_GET_REGION_INFO, req, sizeof(req), NULL, 0, &r, "info region info");
	if (rc < 0) return rc;
	if (r.payload_len < 32) {
		dl_msg_release(&r);
		l->broken = -EPROTO;
		return dl_fail(EPROTO, "info region info: the reply is %zu bytes, needs 32", r.payload_len);
	}
	size = dl_get64(r.payload + 16);
	dl_msg_release(&r);
	if (size == 0 || size > 1u << 20) return dl_fail(EPROTO, "info region: size %llu is not an info region's", (unsigned long long)size);
	char *text = malloc(size + 1);
	if (!text) return dl_fail(ENOMEM, "info region: no memory");
	rc = dl_region_read_raw(l, l->info_index, 0, text, size);
	if (rc == 0) {
		text[size] = 0;
		rc = dl_parse_info(l, text, size);
	}
	free(text);
	return rc;
}
