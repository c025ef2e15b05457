//! Capability sets: what each stage of the worker keeps.

use ::caps::{CapSet, Capability as C, CapsHashSet};

/// What PID 1 of the container keeps: enough to mount, use loop devices and write any
/// owner/mode/xattr/device into the image; nothing for networking, modules, ptrace, time...
/// Not CAP_DAC_READ_SEARCH: CAP_DAC_OVERRIDE covers reading, and with CAP_SYS_ADMIN it
/// would allow `open_by_handle_at`, which opens files outside any root.
pub const SESSION: &[C] = &[
    C::CAP_CHOWN,
    C::CAP_DAC_OVERRIDE,
    C::CAP_FOWNER,
    C::CAP_FSETID,
    C::CAP_MKNOD,
    C::CAP_SETFCAP,
    C::CAP_SETPCAP,
    C::CAP_SYS_ADMIN,
];

/// What the layer applier keeps: no CAP_SYS_ADMIN (no mount, no trusted.* xattrs).
pub const APPLIER: &[C] = &[
    C::CAP_CHOWN,
    C::CAP_DAC_OVERRIDE,
    C::CAP_FOWNER,
    C::CAP_FSETID,
    C::CAP_MKNOD,
    C::CAP_SETFCAP,
];

/// Reduces bounding, permitted, effective, inheritable and ambient sets to `keep`.
pub fn restrict_to(keep: &[C]) -> Result<(), ::caps::errors::CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    for cap in ::caps::all() {
        if !keep.contains(&cap) {
            ::caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    ::caps::clear(None, CapSet::Ambient)?;
    ::caps::clear(None, CapSet::Inheritable)?;
    let have = ::caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = have.intersection(&keep).copied().collect();
    ::caps::set(None, CapSet::Effective, &keep)?;
    ::caps::set(None, CapSet::Permitted, &keep)?;
    Ok(())
}

/// Sets no_new_privs: nothing exec'd later can gain privileges.
pub fn no_new_privs() -> nix::Result<()> {
    nix::sys::prctl::set_no_new_privs()
}
