/*
 * Filesystem calls the Swift Glibc module does not export (sys/xattr.h and
 * syncfs are not part of its module map). Thin wrappers: same arguments,
 * same return values, errno set by the kernel.
 */
#ifndef HEARTH_FS_H
#define HEARTH_FS_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

int hearth_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags);
ssize_t hearth_fgetxattr(int fd, const char *name, void *value, size_t size);
ssize_t hearth_flistxattr(int fd, char *list, size_t size);
/* Path-based, not following a final symlink. */
ssize_t hearth_lgetxattr(const char *path, const char *name, void *value, size_t size);
ssize_t hearth_llistxattr(const char *path, char *list, size_t size);
/* Flushes the filesystem that holds fd. */
int hearth_syncfs(int fd);

#ifdef __cplusplus
}
#endif

#endif
