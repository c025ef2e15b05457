//! Credentials: basic auth from `--creds`, an auth file, `$DOCKER_CONFIG` and credential
//! helpers, and the bearer-token flow; wrong or missing credentials are refused clearly, and
//! no secret is ever printed.

use std::fs;
use std::path::PathBuf;

use rootbox_tests::fixture::handmade;
use rootbox_tests::registry::{self, Fault, FaultReply, FaultyFront, Registry, TokenGate};
use rootbox_tests::run::{
    expect_dir_holds, expect_failure, expect_fsck_clean, expect_success, Outcome,
};

use super::{expect_cut_off, handmade_image, push, via};
use crate::util::check_image;

#[test]
fn registry_basic_auth() {
    let ctx = require_registry!();
    const PASS: &str = "s3cret-Pa55";
    let reg = Registry::start(Some(("alice", PASS)));
    push(&ctx, &reg, &handmade_image(), "hand", "private/hand:v1");
    let src = format!("docker://{}/private/hand:v1", reg.host());
    let no_secret = |o: &Outcome| {
        assert!(
            !o.stderr.contains(PASS) && !o.stdout.contains(PASS),
            "secret leaked:\n{}",
            o.describe()
        );
        assert!(!o.stderr.contains("wrong-pw"), "secret leaked:\n{}", o.describe());
    };

    // Right credentials on the command line.
    let out_dir = ctx.dir("ok");
    let creds = format!("alice:{PASS}");
    let o =
        ctx.pull(&ctx.cache("1"), &src, &out_dir.join("out.ext4"), &["--creds", &creds, "--json"]);
    expect_success(&o);
    no_secret(&o);
    check_image("hand-made via basic auth", &out_dir.join("out.ext4"), &handmade::expected());

    // Wrong credentials, and none: refused, the secret never printed, nothing written.
    for (name, extra) in [("wrong", vec!["--creds", "alice:wrong-pw"]), ("anon", vec![])] {
        let out_dir = ctx.dir(name);
        let o = ctx.pull(&ctx.cache(name), &src, &out_dir.join("out.ext4"), &extra);
        expect_failure(&o, &[3], &["refused access", &reg.host(), "private/hand"]);
        no_secret(&o);
        expect_dir_holds(&out_dir, &[]);
    }

    // From an auth file ($REGISTRY_AUTH_FILE), then from $DOCKER_CONFIG/config.json.
    let auth = format!(
        r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
        reg.host(),
        registry::base64(format!("alice:{PASS}").as_bytes())
    );
    let auth_file = ctx.path("auth.json");
    fs::write(&auth_file, &auth).expect("auth file");
    let docker_dir = ctx.dir("docker-config");
    fs::write(docker_dir.join("config.json"), &auth).expect("docker config");
    for (name, var, path) in [
        ("file", "REGISTRY_AUTH_FILE", auth_file.as_path()),
        ("docker", "DOCKER_CONFIG", docker_dir.as_path()),
    ] {
        let out_dir = ctx.dir(name);
        let cache = ctx.cache(name);
        let o = ctx.pull_vars(
            &[("XDG_CACHE_HOME", &cache), (var, path)],
            &src,
            &out_dir.join("out.ext4"),
            &[],
        );
        expect_success(&o);
        no_secret(&o);
        expect_fsck_clean(&out_dir.join("out.ext4"));
    }

    // From credential helpers: `credHelpers` for this registry, then a `credsStore` behind an
    // empty `auths` placeholder, as `docker login` leaves them. The helper logs what it was
    // asked; it knows nothing of other servers ("credentials not found": anonymous, refused).
    let bin = ctx.dir("helper-bin");
    let asked = ctx.path("helper-asked");
    let helper = bin.join("docker-credential-rbtest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" >> {asked}\n\
             if [ \"$server\" = \"{host}\" ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"{PASS}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            asked = asked.display(),
            host = reg.host(),
        ),
    )
    .expect("helper");
    let mut perms = fs::metadata(&helper).expect("helper").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&helper, perms).expect("chmod helper");
    let path = std::env::join_paths(
        std::iter::once(bin.clone())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");
    let path = PathBuf::from(path);
    let configs = [
        ("helpers", format!(r#"{{"credHelpers":{{"{}":"rbtest"}}}}"#, reg.host())),
        ("store", format!(r#"{{"auths":{{"{}":{{}}}},"credsStore":"rbtest"}}"#, reg.host())),
    ];
    for (name, config) in configs {
        let dir = ctx.dir(&format!("config-{name}"));
        fs::write(dir.join("config.json"), config).expect("config.json");
        let out_dir = ctx.dir(name);
        let cache = ctx.cache(name);
        let o = ctx.pull_vars(
            &[("XDG_CACHE_HOME", &cache), ("DOCKER_CONFIG", &dir), ("PATH", &path)],
            &src,
            &out_dir.join("out.ext4"),
            &[],
        );
        expect_success(&o);
        no_secret(&o);
        check_image(
            &format!("hand-made via {name}"),
            &out_dir.join("out.ext4"),
            &handmade::expected(),
        );
    }
    assert_eq!(
        fs::read_to_string(&asked).expect("helper log"),
        format!("{0}\n{0}\n", reg.host()),
        "each helper was asked for this registry once"
    );
    // A helper named but missing: a clear error naming the helper and the file.
    let dir = ctx.dir("config-missing");
    fs::write(dir.join("config.json"), r#"{"credsStore":"rootbox-absent"}"#).expect("config");
    let out_dir = ctx.dir("missing");
    let o = ctx.pull_vars(
        &[("XDG_CACHE_HOME", &ctx.cache("missing")), ("DOCKER_CONFIG", &dir)],
        &src,
        &out_dir.join("out.ext4"),
        &[],
    );
    expect_failure(&o, &[3], &["docker-credential-rootbox-absent is not on $PATH", "config.json"]);
    expect_dir_holds(&out_dir, &[]);
}

/// The bearer-token flow as the distribution spec has it: a `401` challenge names a token
/// realm, the token is fetched with the basic credentials and then sent on every request.
/// Right credentials pull (few token requests: the token is kept), wrong ones are refused
/// clearly, and an endless token reply is cut off.
#[test]
fn registry_bearer_token_flow() {
    let ctx = require_registry!();
    let reg = Registry::start(None);
    push(&ctx, &reg, &handmade_image(), "hand", "team/hand:v1");
    const PASS: &str = "t0ken-Pa55";
    let gate = TokenGate { token: "tok-123".into(), creds: Some(("bob".into(), PASS.into())) };
    let creds = format!("bob:{PASS}");

    let front = FaultyFront::start_gated(reg.port, vec![], Some(gate.clone()));
    let p = ctx.pull_fresh("ok", &via(&front, "team/hand:v1"), &["--creds", &creds]);
    expect_success(&p.o);
    assert!(!p.o.stderr.contains(PASS) && !p.o.stderr.contains("tok-123"), "{}", p.o.describe());
    check_image("hand-made via a bearer token", &p.out(), &handmade::expected());
    let tokens = front.tokens_issued();
    assert!((1..=4).contains(&tokens), "{tokens} token requests for one pull");

    let p = ctx.pull_fresh("wrong", &via(&front, "team/hand:v1"), &["--creds", "bob:nope"]);
    expect_failure(&p.o, &[3], &["refused access", "team/hand", "--creds"]);
    assert!(!p.o.stderr.contains("nope"), "{}", p.o.describe());
    expect_dir_holds(&p.out_dir, &[]);

    let front = FaultyFront::start_gated(
        reg.port,
        vec![Fault::new("/token", usize::MAX, FaultReply::Endless(200))],
        Some(gate),
    );
    let p = ctx.pull_fresh("endless", &via(&front, "team/hand:v1"), &["--creds", &creds]);
    expect_failure(&p.o, &[3], &["token", "larger than 1048576 bytes"]);
    expect_dir_holds(&p.out_dir, &[]);
    expect_cut_off(&front, "token");
}
