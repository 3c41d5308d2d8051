// SPDX-License-Identifier: GPL-2.0
/*
 * An out-of-tree module for kpatch-rs's tests (`--oot-module`): /proc/kpatch_oot_demo says
 * which oot_demo_show() runs and how often the file was read. The read count is a static of
 * the module, which a livepatch of oot_demo_show() reaches through a livepatch relocation.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

static unsigned long reads;

static int oot_demo_show(struct seq_file *m, void *v)
{
	reads++;
	seq_printf(m, "original, read %lu\n", reads);
	return 0;
}

static int __init oot_demo_init(void)
{
	if (!proc_create_single("kpatch_oot_demo", 0444, NULL, oot_demo_show))
		return -ENOMEM;
	return 0;
}

static void __exit oot_demo_exit(void)
{
	remove_proc_entry("kpatch_oot_demo", NULL);
}

module_init(oot_demo_init);
module_exit(oot_demo_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kpatch-rs test: an out-of-tree module with a /proc file");
