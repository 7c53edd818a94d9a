#define _GNU_SOURCE
/* The error style: -errno returns, and the calling thread's last failure in words. */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

static _Thread_local char last[1536];

const char *devlease_errmsg(void)
{
	return last;
}

int dl_fail(int err, const char *fmt, ...)
{
	char tmp[sizeof(last)]; /* the arguments may point into `last` itself */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	memcpy(last, tmp, sizeof(last));
	return -(err > 0 ? err : EIO);
}

int dl_check_open(const struct devlease *l, const char *what)
{
	if (!l) return dl_fail(EINVAL, "%s: no lease (NULL)", what);
	if (l->closed) return dl_fail(EBADF, "%s: lease %s is closed", what, l->name);
	return 0;
}

const char *devlease_notice_name(enum devlease_notice_kind k)
{
	switch (k) {
	case DEVLEASE_NOTICE_NONE: return "none";
	case DEVLEASE_NOTICE_REVOKE: return "revoke";
	case DEVLEASE_NOTICE_FAULT: return "fault";
	case DEVLEASE_NOTICE_RESET: return "reset";
	case DEVLEASE_NOTICE_DISCONNECTED: return "disconnected";
	}
	return "unknown";
}
