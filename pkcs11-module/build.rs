//! Link flags of the cdylib.

fn main() {
    // Keep the module mapped after `dlclose`: its crypto library registers thread-specific
    // data destructors (pthread keys) that run when a thread that used the module exits; an
    // application that unloads the module first (C_Finalize, dlclose) and then ends such a
    // thread would jump into unmapped code. With `-z nodelete`, `dlclose` leaves the module in
    // place, and a later `dlopen` finds it (with `C_Initialize` needed again, as always).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
