/**
 * Every sandbox runs in a user namespace: root inside is this unprivileged uid
 * range outside. Images are stored already shifted into the range so the
 * overlay needs no id-mapping at mount time. 2^24 keeps clear of the ranges
 * Debian hands out in /etc/subuid (100000 upwards).
 */
export const USERNS_HOST_BASE = 1 << 24;
export const USERNS_SIZE = 65536;

export const hostUid = (containerUid: number) => USERNS_HOST_BASE + containerUid;
