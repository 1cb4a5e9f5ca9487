//! A direct reader of an admitted workload's JSON into the model, for the webhook's hot path.
//! Serde's derived readers spend most of an admission's parsing time in generic machinery
//! (each key decoded, matched and wrapped in several layers of results); this reads the
//! same fields in one pass over the bytes.
//!
//! It is only a shortcut: it answers `None` for anything it does not read exactly as the
//! serde model does (escaped keys, numbers that are not plain integers, a value of an
//! unexpected type, a repeated field, invalid JSON, ...), and the caller then reads the object
//! with serde, which gives the same model or the error naming the field. So an object reads
//! the same either way; tests compare both readers on every fixture and on damaged copies.

use super::container::{
    Capabilities, Container, ContainerPort, Handler, HostTarget, Lifecycle, Quantity,
    ResourceRequirements, SecurityContext, VolumeMount,
};
use super::meta::ObjectMeta;
use super::pod::{
    PodOs, PodSecurityContext, PodSpec, Profile, SeLinuxOptions, Sysctl, WindowsOptions,
};
use super::volume::Volume;
use super::workload::{PodTemplate, TemplatePaths, Workload};
use super::{Map, Text};
use crate::{Kind, VolumeType};

/// For fuzzing and tests: whether the direct reader, when it reads `raw` at all, reads what
/// serde reads (`Err` with both readings when not). A silent difference would be an
/// admission bypass on the hot path.
#[doc(hidden)]
pub fn direct_reader_agrees(kind: Kind, raw: &str) -> Result<bool, String> {
    let Some(fast) = workload(kind, raw) else {
        return Ok(false);
    };
    match super::workload::pod_template(kind, raw) {
        Ok(Some(serde)) if serde == *fast => Ok(true),
        other => Err(format!(
            "{kind:?} {raw}\n direct: {fast:?}\n serde: {other:?}"
        )),
    }
}

/// The workload of `kind` in `raw`, when this reader can read it (see the module). Read into
/// its box in place: a container is 856 bytes, and handing each value back up the readers
/// copied the containers three times.
pub(crate) fn workload(kind: Kind, raw: &str) -> Option<Box<Workload>> {
    let paths = TemplatePaths::of(kind)?;
    let mut r = Reader {
        text: raw,
        bytes: raw.as_bytes(),
        at: 0,
        depth: 0,
    };
    let mut w = Box::new(Workload {
        kind,
        metadata: ObjectMeta::default(),
        pod: PodTemplate {
            paths,
            ..PodTemplate::default()
        },
    });
    let Workload { metadata, pod, .. } = &mut *w;
    match kind {
        Kind::Pod => {
            pod_shape(&mut r, pod)?;
            *metadata = pod.metadata.clone();
        }
        Kind::CronJob => {
            // {metadata, spec: {jobTemplate: {spec: {template: pod}}}}
            r.fields(|r, key, seen| match key {
                b"metadata" => r.once(seen, 0, |r| r.nullable_in(object_meta, metadata)),
                b"spec" => r.once(seen, 1, |r| {
                    r.nullable_in(
                        |r, pod| {
                            r.fields(|r, key, seen| match key {
                                b"jobTemplate" => r.once(seen, 0, |r| {
                                    r.nullable_in(
                                        |r, pod| {
                                            r.fields(|r, key, seen| match key {
                                                b"spec" => r.once(seen, 0, |r| {
                                                    r.nullable_in(template_holder, pod)
                                                }),
                                                _ => r.skip_value(),
                                            })
                                        },
                                        pod,
                                    )
                                }),
                                _ => r.skip_value(),
                            })
                        },
                        pod,
                    )
                }),
                _ => r.skip_value(),
            })?;
        }
        _ => {
            // {metadata, spec: {template: pod}}
            r.fields(|r, key, seen| match key {
                b"metadata" => r.once(seen, 0, |r| r.nullable_in(object_meta, metadata)),
                b"spec" => r.once(seen, 1, |r| r.nullable_in(template_holder, pod)),
                _ => r.skip_value(),
            })?;
        }
    }
    r.end()?;
    Some(w)
}

/// `{template: pod}`.
fn template_holder(r: &mut Reader<'_>, pod: &mut PodTemplate) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"template" => r.once(seen, 0, |r| r.nullable_in(pod_shape, pod)),
        _ => r.skip_value(),
    })
}

/// `{metadata, spec}` of a Pod or a pod template (its `paths` are left as they are).
fn pod_shape(r: &mut Reader<'_>, pod: &mut PodTemplate) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"metadata" => r.once(seen, 0, |r| r.nullable_in(object_meta, &mut pod.metadata)),
        b"spec" => r.once(seen, 1, |r| r.nullable_in(pod_spec, &mut pod.spec)),
        _ => r.skip_value(),
    })
}

fn object_meta(r: &mut Reader<'_>, m: &mut ObjectMeta) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"name" => r.once(seen, 0, |r| r.nullable_string(&mut m.name)),
        b"generateName" => r.once(seen, 1, |r| r.nullable_string(&mut m.generate_name)),
        b"namespace" => r.once(seen, 2, |r| r.nullable_string(&mut m.namespace)),
        b"labels" => r.once(seen, 3, |r| r.nullable_map(&mut m.labels, Reader::string)),
        b"annotations" => r.once(seen, 4, |r| {
            r.nullable_map(&mut m.annotations, Reader::string)
        }),
        _ => r.skip_value(),
    })
}

fn pod_spec(r: &mut Reader<'_>, s: &mut PodSpec) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"hostNetwork" => r.once(seen, 0, |r| r.nullable_bool(&mut s.host_network)),
        b"hostPID" => r.once(seen, 1, |r| r.nullable_bool(&mut s.host_pid)),
        b"hostIPC" => r.once(seen, 2, |r| r.nullable_bool(&mut s.host_ipc)),
        b"hostUsers" => r.once(seen, 3, |r| r.option(Reader::bool, &mut s.host_users)),
        b"securityContext" => r.once(seen, 4, |r| {
            r.nullable_in(pod_security_context, &mut s.security_context)
        }),
        b"containers" => r.once(seen, 5, |r| r.list_in(container, &mut s.containers)),
        b"initContainers" => r.once(seen, 6, |r| r.list_in(container, &mut s.init_containers)),
        b"ephemeralContainers" => r.once(seen, 7, |r| {
            r.list_in(container, &mut s.ephemeral_containers)
        }),
        b"volumes" => r.once(seen, 8, |r| r.nullable_list(volume, &mut s.volumes)),
        b"os" => r.once(seen, 9, |r| r.option_in(pod_os, &mut s.os)),
        _ => r.skip_value(),
    })
}

fn pod_os(r: &mut Reader<'_>, os: &mut PodOs) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"name" => r.once(seen, 0, |r| r.nullable_string(&mut os.name)),
        _ => r.skip_value(),
    })
}

fn pod_security_context(r: &mut Reader<'_>, c: &mut PodSecurityContext) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"runAsUser" => r.once(seen, 0, |r| r.option(Reader::i64, &mut c.run_as_user)),
        b"runAsGroup" => r.once(seen, 1, |r| r.option(Reader::i64, &mut c.run_as_group)),
        b"runAsNonRoot" => r.once(seen, 2, |r| r.option(Reader::bool, &mut c.run_as_non_root)),
        b"fsGroup" => r.once(seen, 3, |r| r.option(Reader::i64, &mut c.fs_group)),
        b"supplementalGroups" => r.once(seen, 4, |r| {
            r.nullable_list(Reader::i64, &mut c.supplemental_groups)
        }),
        b"seccompProfile" => r.once(seen, 5, |r| r.option_in(profile, &mut c.seccomp_profile)),
        b"appArmorProfile" => r.once(seen, 6, |r| r.option_in(profile, &mut c.app_armor_profile)),
        b"seLinuxOptions" => r.once(seen, 7, |r| {
            r.option_in(se_linux_options, &mut c.se_linux_options)
        }),
        b"sysctls" => r.once(seen, 8, |r| r.list_in(sysctl, &mut c.sysctls)),
        b"windowsOptions" => r.once(seen, 9, |r| {
            r.nullable_in(windows_options, &mut c.windows_options)
        }),
        _ => r.skip_value(),
    })
}

fn profile(r: &mut Reader<'_>, p: &mut Profile) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"type" => r.once(seen, 0, |r| r.nullable_string(&mut p.type_)),
        b"localhostProfile" => r.once(seen, 1, |r| {
            r.option(Reader::string, &mut p.localhost_profile)
        }),
        _ => r.skip_value(),
    })
}

fn se_linux_options(r: &mut Reader<'_>, o: &mut SeLinuxOptions) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"user" => r.once(seen, 0, |r| r.nullable_string(&mut o.user)),
        b"role" => r.once(seen, 1, |r| r.nullable_string(&mut o.role)),
        b"type" => r.once(seen, 2, |r| r.nullable_string(&mut o.type_)),
        b"level" => r.once(seen, 3, |r| r.nullable_string(&mut o.level)),
        _ => r.skip_value(),
    })
}

fn sysctl(r: &mut Reader<'_>, s: &mut Sysctl) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"name" => r.once(seen, 0, |r| r.nullable_string(&mut s.name)),
        b"value" => r.once(seen, 1, |r| r.nullable_string(&mut s.value)),
        _ => r.skip_value(),
    })
}

fn windows_options(r: &mut Reader<'_>, w: &mut WindowsOptions) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"hostProcess" => r.once(seen, 0, |r| r.option(Reader::bool, &mut w.host_process)),
        _ => r.skip_value(),
    })
}

fn container(r: &mut Reader<'_>, c: &mut Container) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"name" => r.once(seen, 0, |r| r.nullable_string(&mut c.name)),
        b"image" => r.once(seen, 1, |r| r.nullable_string(&mut c.image)),
        b"ports" => r.once(seen, 2, |r| r.list_in(container_port, &mut c.ports)),
        b"securityContext" => r.once(seen, 3, |r| {
            r.nullable_in(security_context, &mut c.security_context)
        }),
        b"volumeMounts" => r.once(seen, 4, |r| r.list_in(volume_mount, &mut c.volume_mounts)),
        b"resources" => r.once(seen, 5, |r| r.nullable_in(resources, &mut c.resources)),
        b"livenessProbe" => r.once(seen, 6, |r| r.option_in(handler, &mut c.liveness_probe)),
        b"readinessProbe" => r.once(seen, 7, |r| r.option_in(handler, &mut c.readiness_probe)),
        b"startupProbe" => r.once(seen, 8, |r| r.option_in(handler, &mut c.startup_probe)),
        b"lifecycle" => r.once(seen, 9, |r| r.nullable_in(lifecycle, &mut c.lifecycle)),
        _ => r.skip_value(),
    })
}

fn container_port(r: &mut Reader<'_>, p: &mut ContainerPort) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"hostPort" => r.once(seen, 0, |r| r.nullable_i32(&mut p.host_port)),
        b"containerPort" => r.once(seen, 1, |r| r.nullable_i32(&mut p.container_port)),
        _ => r.skip_value(),
    })
}

fn security_context(r: &mut Reader<'_>, c: &mut SecurityContext) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"privileged" => r.once(seen, 0, |r| r.option(Reader::bool, &mut c.privileged)),
        b"capabilities" => r.once(seen, 1, |r| {
            r.nullable_in(capabilities, &mut c.capabilities)
        }),
        b"allowPrivilegeEscalation" => r.once(seen, 2, |r| {
            r.option(Reader::bool, &mut c.allow_privilege_escalation)
        }),
        b"readOnlyRootFilesystem" => r.once(seen, 3, |r| {
            r.option(Reader::bool, &mut c.read_only_root_filesystem)
        }),
        b"runAsUser" => r.once(seen, 4, |r| r.option(Reader::i64, &mut c.run_as_user)),
        b"runAsGroup" => r.once(seen, 5, |r| r.option(Reader::i64, &mut c.run_as_group)),
        b"runAsNonRoot" => r.once(seen, 6, |r| r.option(Reader::bool, &mut c.run_as_non_root)),
        b"seccompProfile" => r.once(seen, 7, |r| r.option_in(profile, &mut c.seccomp_profile)),
        b"appArmorProfile" => r.once(seen, 8, |r| r.option_in(profile, &mut c.app_armor_profile)),
        b"seLinuxOptions" => r.once(seen, 9, |r| {
            r.option_in(se_linux_options, &mut c.se_linux_options)
        }),
        b"procMount" => r.once(seen, 10, |r| r.option(Reader::string, &mut c.proc_mount)),
        b"windowsOptions" => r.once(seen, 11, |r| {
            r.nullable_in(windows_options, &mut c.windows_options)
        }),
        _ => r.skip_value(),
    })
}

fn capabilities(r: &mut Reader<'_>, c: &mut Capabilities) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"add" => r.once(seen, 0, |r| r.nullable_list(Reader::string, &mut c.add)),
        b"drop" => r.once(seen, 1, |r| r.nullable_list(Reader::string, &mut c.drop)),
        _ => r.skip_value(),
    })
}

fn volume_mount(r: &mut Reader<'_>, m: &mut VolumeMount) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"name" => r.once(seen, 0, |r| r.nullable_string(&mut m.name)),
        b"readOnly" => r.once(seen, 1, |r| r.nullable_bool(&mut m.read_only)),
        b"mountPath" => r.once(seen, 2, |r| r.nullable_string(&mut m.mount_path)),
        _ => r.skip_value(),
    })
}

fn resources(r: &mut Reader<'_>, q: &mut ResourceRequirements) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"limits" => r.once(seen, 0, |r| r.nullable_map(&mut q.limits, quantity)),
        _ => r.skip_value(),
    })
}

/// A quantity as a string, or a plain integer kept as its text (as serde reads it: an integer
/// past 64 bits is a float to serde, left to it).
fn quantity(r: &mut Reader<'_>) -> Option<Quantity> {
    match r.peek()? {
        b'"' => r.string().map(Quantity),
        _ => {
            let text = r.integer_text()?;
            let fits = text.parse::<u64>().is_ok() || text.parse::<i64>().is_ok();
            fits.then(|| Quantity(Text::from(text)))
        }
    }
}

fn lifecycle(r: &mut Reader<'_>, l: &mut Lifecycle) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"postStart" => r.once(seen, 0, |r| r.option_in(handler, &mut l.post_start)),
        b"preStop" => r.once(seen, 1, |r| r.option_in(handler, &mut l.pre_stop)),
        _ => r.skip_value(),
    })
}

fn handler(r: &mut Reader<'_>, h: &mut Handler) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"httpGet" => r.once(seen, 0, |r| r.option_in(host_target, &mut h.http_get)),
        b"tcpSocket" => r.once(seen, 1, |r| r.option_in(host_target, &mut h.tcp_socket)),
        _ => r.skip_value(),
    })
}

fn host_target(r: &mut Reader<'_>, t: &mut HostTarget) -> Option<()> {
    r.fields(|r, key, seen| match key {
        b"host" => r.once(seen, 0, |r| r.nullable_string(&mut t.host)),
        _ => r.skip_value(),
    })
}

/// A volume, as `Volume`'s own serde reader takes it: a repeated `name` or source is not an
/// error (the last name wins; sources add up), `null` leaves a source unset.
fn volume(r: &mut Reader<'_>) -> Option<Volume> {
    let mut v = Volume::default();
    r.members(|r, key| {
        if key == "name" {
            v.name = if r.null() {
                Text::default()
            } else {
                r.string()?
            };
            return Some(());
        }
        let Some(source) = VolumeType::from_name(key) else {
            return r.skip_value();
        };
        if r.null() {
            return Some(());
        }
        match source {
            VolumeType::HostPath => v.host_path = Some(one_string_field(r, b"path")?),
            VolumeType::FlexVolume => {
                v.flex_volume_driver = Some(one_string_field(r, b"driver")?);
            }
            VolumeType::Image => v.image = Some(one_string_field(r, b"reference")?),
            _ => {
                (r.peek()? == b'{').then_some(())?;
                r.skip_value()?;
            }
        }
        v.sources.insert(source);
        Some(())
    })?;
    if v.sources.is_empty() {
        v.sources.insert(VolumeType::EmptyDir);
    }
    Some(v)
}

/// An object of which only the string field `name` is read (`null` or absent: empty).
fn one_string_field(r: &mut Reader<'_>, name: &[u8]) -> Option<Text> {
    let mut value = Text::default();
    r.fields(|r, key, seen| {
        if key == name {
            r.once(seen, 0, |r| r.nullable_string(&mut value))
        } else {
            r.skip_value()
        }
    })?;
    Some(value)
}

/// A cursor over the JSON text. Every method answers `None` for what it does not read.
/// Strings are cut at their (ASCII) quotes, so every slice of `text` is on a char boundary.
struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    /// Arrays and objects `skip_value` is inside.
    depth: u32,
}

/// How deep `skip_value` goes before leaving the object to serde.
const MAX_SKIPPED_DEPTH: u32 = 64;

impl<'a> Reader<'a> {
    fn skip_whitespace(&mut self) {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        self.at += rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
            .unwrap_or(rest.len());
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        // Compact JSON (what the API server sends) has no whitespace to skip.
        let next = *self.bytes.get(self.at)?;
        if next > b' ' {
            return Some(next);
        }
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    /// After an opening quote: the length of the string's text up to the first byte that is
    /// a quote, a backslash or a control character, and that byte (eight bytes at a time, as
    /// most strings have none of them for a while).
    fn scan_string(&self) -> Option<(usize, u8)> {
        const ONES: u64 = u64::MAX / 255;
        const HIGH: u64 = ONES << 7;
        let rest = self.bytes.get(self.at..)?;
        let mut chunks = rest.chunks_exact(8);
        let mut offset = 0;
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().ok()?);
            // A byte below 0x20, or equal to `"` or `\`, sets its high bit in `found`.
            let control = word.wrapping_sub(ONES * 0x20) & !word;
            let quote = (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES)
                & !(word ^ (ONES * u64::from(b'"')));
            let backslash = (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES)
                & !(word ^ (ONES * u64::from(b'\\')));
            let found = (control | quote | backslash) & HIGH;
            if found != 0 {
                let at = offset + found.trailing_zeros() as usize / 8;
                return Some((at, rest[at]));
            }
            offset += 8;
        }
        let tail = chunks.remainder();
        let at = tail
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        Some((offset + at, tail[at]))
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Only whitespace after the value.
    fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// Consumes a `null` if one is next.
    fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.literal(b"null")
    }

    fn bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' if self.literal(b"true") => Some(true),
            b'f' if self.literal(b"false") => Some(false),
            _ => None,
        }
    }

    /// A string without escapes (keys), the quotes consumed.
    fn plain_string(&mut self) -> Option<&'a str> {
        let text = self.plain_span()?;
        self.text.get(text)
    }

    /// Where the text of a string without escapes is; the quotes consumed. Always inlined:
    /// as a call, handing the range back costs ~1,000 instructions per Deployment.
    #[inline(always)]
    fn plain_span(&mut self) -> Option<std::ops::Range<usize>> {
        self.eat(b'"')?;
        let start = self.at;
        // Escapes and raw control characters: serde decides.
        let (length, b'"') = self.scan_string()? else {
            return None;
        };
        self.at += length + 1;
        Some(start..start + length)
    }

    fn string(&mut self) -> Option<Text> {
        self.eat(b'"')?;
        let start = self.at;
        match self.scan_string()? {
            (length, b'"') => {
                self.at += length + 1;
                return self.text.get(start..start + length).map(Text::from);
            }
            (_, b'\\') => {}
            _ => return None,
        }
        // Escapes, rare outside annotations: found and checked as when skipping, decoded by
        // serde_json.
        self.at = start - 1;
        self.skip_string()?;
        serde_json::from_str(self.text.get(start - 1..self.at)?).ok()
    }

    /// A string, checked and not kept. Escapes are checked as serde checks them; a `\\u`
    /// escape of a surrogate is left to serde.
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let (length, stop) = self.scan_string()?;
            self.at += length;
            match stop {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => match *self.bytes.get(self.at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
                    b'u' => {
                        let hex = self.text.get(self.at + 2..self.at + 6)?;
                        let unit = u16::from_str_radix(hex, 16).ok()?;
                        if !hex.bytes().all(|b| b.is_ascii_hexdigit())
                            || (0xd800..=0xdfff).contains(&unit)
                        {
                            return None;
                        }
                        self.at += 6;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// A JSON integer as written (`-?(0|[1-9][0-9]*)`), not followed by a fraction or an
    /// exponent; `-0` is left to serde.
    fn integer_text(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        let start = self.at;
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        let count = self.at - digits;
        let leading_zero = count > 1 && self.bytes[digits] == b'0';
        let negative_zero = digits > start && count == 1 && self.bytes[digits] == b'0';
        if count == 0
            || leading_zero
            || negative_zero
            || matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        self.text.get(start..self.at)
    }

    fn i64(&mut self) -> Option<i64> {
        self.integer_text()?.parse().ok()
    }

    fn nullable_i32(&mut self, out: &mut i32) -> Option<()> {
        self.nullable_into(|r| r.integer_text()?.parse().ok(), out)
    }

    fn nullable_bool(&mut self, out: &mut bool) -> Option<()> {
        self.nullable_into(Reader::bool, out)
    }

    fn nullable_string(&mut self, out: &mut Text) -> Option<()> {
        self.nullable_into(Reader::string, out)
    }

    /// An optional field: `null` is `None` (for a field whose `null` reads as its default,
    /// the caller takes the default for `None`).
    fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Option<T>,
        out: &mut Option<T>,
    ) -> Option<()> {
        *out = if self.null() { None } else { Some(read(self)?) };
        Some(())
    }

    /// A field whose `null` reads as its default.
    fn nullable_into<T: Default>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Option<T>,
        out: &mut T,
    ) -> Option<()> {
        *out = if self.null() {
            T::default()
        } else {
            read(self)?
        };
        Some(())
    }

    /// A struct field read in place, `null` leaving it as it is. Only for a field still at its
    /// default: the struct it belongs to was just made, and `once` lets each field be read
    /// one time.
    fn nullable_in<T>(
        &mut self,
        read: impl FnOnce(&mut Self, &mut T) -> Option<()>,
        out: &mut T,
    ) -> Option<()> {
        if self.null() {
            return Some(());
        }
        read(self, out)
    }

    /// An optional struct field (`null` is `None`), read in place as `nullable_in`.
    fn option_in<T: Default>(
        &mut self,
        read: impl FnOnce(&mut Self, &mut T) -> Option<()>,
        out: &mut Option<T>,
    ) -> Option<()> {
        if self.null() {
            *out = None;
            return Some(());
        }
        read(self, out.insert(T::default()))
    }

    /// A list of structs, each read in place at the end of the list (as `nullable_list`).
    fn list_in<T: Default, L: Default + Extend<T> + AsMut<[T]>>(
        &mut self,
        mut read: impl FnMut(&mut Self, &mut T) -> Option<()>,
        out: &mut L,
    ) -> Option<()> {
        self.list(out, |r, out| {
            out.extend(std::iter::once(T::default()));
            read(r, out.as_mut().last_mut()?)
        })
    }

    /// A list (a `Vec`, or a `SmallVec` for lists that usually hold an item or two).
    fn nullable_list<T, L: Default + Extend<T>>(
        &mut self,
        mut read: impl FnMut(&mut Self) -> Option<T>,
        out: &mut L,
    ) -> Option<()> {
        self.list(out, |r, out| {
            out.extend(std::iter::once(read(r)?));
            Some(())
        })
    }

    /// A list or `null` (empty), each item added to `out` by `item`.
    fn list<L: Default>(
        &mut self,
        out: &mut L,
        mut item: impl FnMut(&mut Self, &mut L) -> Option<()>,
    ) -> Option<()> {
        *out = L::default();
        if self.null() {
            return Some(());
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self, out)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A map of string keys: a repeated key keeps the last value, as serde's map does.
    fn nullable_map<T>(
        &mut self,
        out: &mut Map<T>,
        mut read: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<()> {
        out.clear();
        if self.null() {
            return Some(());
        }
        let mut entries = smallvec::SmallVec::new();
        self.members(|r, key| {
            entries.push((Text::from(key), read(r)?));
            Some(())
        })?;
        *out = Map::from_entries(entries);
        Some(())
    }

    /// A key as bytes (struct fields are matched on bytes, so no `str` boundaries are
    /// checked): a string without escapes, the quotes consumed.
    fn key_bytes(&mut self) -> Option<&'a [u8]> {
        let text = self.plain_span()?;
        self.bytes.get(text)
    }

    /// The `:` after a key: in compact JSON the very next byte.
    fn colon(&mut self) -> Option<()> {
        if self.bytes.get(self.at) == Some(&b':') {
            self.at += 1;
            return Some(());
        }
        self.eat(b':')
    }

    /// An object's members, each handed to `member` with its key (which reads the value).
    fn members(&mut self, member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.object(Self::plain_string, member)
    }

    /// An object's members with keys read by `key`.
    fn object<K>(
        &mut self,
        key: impl Fn(&mut Self) -> Option<K>,
        mut member: impl FnMut(&mut Self, K) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = key(self)?;
            self.colon()?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A struct's fields: like `members`, with a set of the fields seen so far (serde's
    /// derived readers refuse a repeated field).
    fn fields(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a [u8], &mut u32) -> Option<()>,
    ) -> Option<()> {
        let mut seen = 0u32;
        self.object(Self::key_bytes, |r, key| field(r, key, &mut seen))
    }

    /// Reads field number `bit` with `read`, unless it was seen before.
    fn once(
        &mut self,
        seen: &mut u32,
        bit: u32,
        read: impl FnOnce(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if *seen & (1 << bit) != 0 {
            return None;
        }
        *seen |= 1 << bit;
        read(self)
    }

    /// Any JSON value, checked as strictly as serde checks a value it ignores.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            open @ (b'{' | b'[') => {
                // Nesting deeper than this is left to serde (which skips unknown values
                // without recursing), so a hostile object cannot exhaust the stack here.
                if self.depth == MAX_SKIPPED_DEPTH {
                    return None;
                }
                self.depth += 1;
                let skipped = self.skip_nested(open);
                self.depth -= 1;
                skipped
            }
            b'"' => self.skip_string(),
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.literal(b"null").then_some(()),
            _ => self.number(),
        }
    }

    /// An object or array (`open` is next).
    fn skip_nested(&mut self, open: u8) -> Option<()> {
        match open {
            b'{' => {
                // Keys may have escapes here (`managedFields` has keys like `k:{\"name\":…}`).
                self.at += 1;
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip_whitespace();
                    self.skip_string()?;
                    self.eat(b':')?;
                    self.skip_value()?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => {
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip_value()?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
        }
    }

    /// Any JSON number (`-?int frac? exp?`).
    fn number(&mut self) -> Option<()> {
        let digits = |r: &mut Self| {
            let start = r.at;
            while r.bytes.get(r.at).is_some_and(u8::is_ascii_digit) {
                r.at += 1;
            }
            (r.at > start).then_some(start)
        };
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let start = digits(self)?;
        if self.at - start > 1 && self.bytes[start] == b'0' {
            return None;
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            digits(self)?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::engine::Object;

    /// Every workload the tests have: the upstream Pod Security fixtures (YAML, read as JSON)
    /// and the objects of the AdmissionReviews captured from kube-apiserver.
    fn fixtures() -> Vec<(Kind, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let mut stack = vec![root.join("tests/psa/testdata")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    files.push(path);
                }
            }
        }
        files.sort();
        let mut objects = Vec::new();
        for file in &files {
            let value: serde_json::Value =
                serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            objects.push(value);
        }
        let reviews: PathBuf = root.join("../agent/tests/fixtures/admission");
        let mut reviews: Vec<PathBuf> = std::fs::read_dir(reviews)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        reviews.sort();
        assert!(reviews.len() >= 20, "the captured reviews");
        for file in reviews {
            let review: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            for key in ["object", "oldObject"] {
                let object = &review["request"][key];
                if object.is_object() {
                    objects.push(object.clone());
                }
            }
        }
        objects
            .into_iter()
            .filter_map(|object| {
                let kind = Kind::from_name(object["kind"].as_str()?)?;
                TemplatePaths::of(kind)?;
                Some((kind, serde_json::to_string(&object).unwrap()))
            })
            .collect()
    }

    /// The serde reading of `raw`, which the direct reader must equal whenever it answers.
    fn agrees(kind: Kind, raw: &str) -> Result<bool, String> {
        direct_reader_agrees(kind, raw)
    }

    #[test]
    fn every_fixture_reads_directly_and_as_serde_reads_it() {
        let fixtures = fixtures();
        assert!(fixtures.len() > 4000, "{}", fixtures.len());
        for (kind, raw) in &fixtures {
            assert_eq!(agrees(*kind, raw), Ok(true), "{raw}");
            // Pretty-printed (whitespace everywhere) reads the same.
            let value: serde_json::Value = serde_json::from_str(raw).unwrap();
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            assert_eq!(agrees(*kind, &pretty), Ok(true), "{pretty}");
        }
    }

    #[test]
    fn damaged_objects_read_as_serde_reads_them_or_are_left_to_it() {
        // Every fixture of distinct text, damaged in many ways: the direct reader either
        // gives serde's result or leaves the object to serde (whose error names the field).
        let mut fixtures = fixtures();
        fixtures.sort_by(|a, b| a.1.cmp(&b.1));
        fixtures.dedup_by(|a, b| a.1 == b.1);
        let replacements: [&str; 24] = [
            "\"",
            "\\",
            "1",
            "-",
            ".",
            "e",
            "n",
            "{",
            "[",
            "]",
            "}",
            ",",
            ":",
            " ",
            "\u{1}",
            "null",
            "true",
            "\"x\"",
            "1.0",
            "-0",
            "1e2",
            "99999999999999999999",
            "[]",
            "{}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let (mut direct, mut left) = (0, 0);
        let mut failures = Vec::new();
        for (kind, raw) in &fixtures {
            for _ in 0..12 {
                let at = next(raw.len());
                let at = (0..=at)
                    .rev()
                    .find(|&i| raw.is_char_boundary(i))
                    .unwrap_or(0);
                let damaged = match next(4) {
                    0 => raw[..at].to_owned(),
                    1 => {
                        let end = (at + 1..=raw.len())
                            .find(|&i| raw.is_char_boundary(i))
                            .unwrap_or(raw.len());
                        let with = replacements[next(replacements.len())];
                        format!("{}{with}{}", &raw[..at], &raw[end..])
                    }
                    2 => {
                        // A value replaced: after a colon, up to the next comma or brace.
                        let Some(colon) = raw[at..].find(':').map(|i| at + i + 1) else {
                            continue;
                        };
                        let end = raw[colon..]
                            .find([',', '}'])
                            .map_or(raw.len(), |i| colon + i);
                        let with = replacements[next(replacements.len())];
                        format!("{}{with}{}", &raw[..colon], &raw[end..])
                    }
                    _ => {
                        // A key repeated: the member after an opening brace, again.
                        let Some(open) = raw[at..].find("{\"").map(|i| at + i + 1) else {
                            continue;
                        };
                        let end = raw[open..].find([',', '}']).map_or(raw.len(), |i| open + i);
                        let member = &raw[open..end];
                        format!("{}{member},{}", &raw[..open], &raw[open..])
                    }
                };
                match agrees(*kind, &damaged) {
                    Ok(true) => direct += 1,
                    Ok(false) => left += 1,
                    Err(problem) => failures.push(problem),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        // Both outcomes happen, so the test checks something either way.
        assert!(
            direct > 100 && left > 100,
            "{direct} read directly, {left} left"
        );
    }

    #[test]
    fn deep_nesting_is_left_to_serde() {
        // Far deeper than a stack could recurse: left to serde, which skips an unknown value
        // without recursing, and reads the object.
        let deep = format!(
            r#"{{"spec":{{"x":{}1{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(workload(Kind::Pod, &deep), None);
        assert!(Object::parse(Kind::Pod, &deep).is_ok());
        // Within the limit, read directly.
        let nested = format!(
            r#"{{"spec":{{"x":{}1{}}}}}"#,
            "[".repeat(60),
            "]".repeat(60)
        );
        assert_eq!(agrees(Kind::Pod, &nested), Ok(true));
    }

    #[test]
    fn escapes_numbers_and_nulls_read_as_serde_reads_them() {
        for raw in [
            r#"{"metadata":{"name":"a\"b","labels":{"k":"\u00e9\n"}},"spec":{"containers":[{"name":"x","image":"i"}]}}"#,
            r#"{"spec":{"hostNetwork":null,"securityContext":null,"containers":null,"volumes":[{"name":"v","hostPath":null}]}}"#,
            r#"{"spec":{"containers":[{"resources":{"limits":{"cpu":1,"memory":"1Gi","x":-2}},"ports":[{"hostPort":80,"containerPort":null}]}]}}"#,
            r#"{"spec":{"volumes":[{"name":"a","name":"b","hostPath":{"path":"/x"},"configMap":{"name":"c"}}]}}"#,
            r#"{"spec":{"volumes":[{"name":"a","image":{"reference":"evil.example.com/x:1","pullPolicy":"Always"}},{"name":"b","image":null},{"name":"c","image":{}}]}}"#,
            r#"{"spec":{"unknown":[1,-2.5e3,true,false,null,{"a":"\ud83d\ude00"}],"os":{"name":"windows"}}}"#,
        ] {
            assert!(agrees(Kind::Pod, raw).is_ok(), "{raw}");
        }
        // A workload's levels above the pod may be null or missing: an empty pod, still at
        // the workload's own field paths.
        for (kind, raw) in [
            (Kind::CronJob, r#"{"spec":null}"#),
            (Kind::CronJob, r#"{"spec":{"jobTemplate":null}}"#),
            (
                Kind::CronJob,
                r#"{"spec":{"jobTemplate":{"spec":{"template":null}}}}"#,
            ),
            (
                Kind::CronJob,
                r#"{"metadata":null,"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"i"}]}}}}}}"#,
            ),
            (Kind::Deployment, r#"{"spec":{"template":null}}"#),
            (Kind::Job, r#"{"metadata":{"name":"j"},"spec":null}"#),
        ] {
            assert_eq!(agrees(kind, raw), Ok(true), "{raw}");
        }
        // An image volume's reference is read by both readers (a reader that skipped it would
        // let the image past every image rule).
        let raw =
            r#"{"spec":{"volumes":[{"name":"a","image":{"reference":"evil.example.com/x:1"}}]}}"#;
        assert_eq!(agrees(Kind::Pod, raw), Ok(true));
        let direct = workload(Kind::Pod, raw).unwrap();
        assert_eq!(
            direct.pod.spec.volumes[0].image.as_deref(),
            Some("evil.example.com/x:1")
        );
        // Read directly where nothing is unusual.
        assert_eq!(
            agrees(
                Kind::Pod,
                r#"{"spec":{"volumes":[{"name":"a","name":"b"}]}}"#
            ),
            Ok(true)
        );
        // Left to serde: a float where an integer goes, a repeated field, an escaped key.
        for raw in [
            r#"{"spec":{"containers":[{"ports":[{"hostPort":80.0}]}]}}"#,
            r#"{"spec":{"hostPID":true,"hostPID":false}}"#,
            r#"{"spec":{"host\u0050ID":true}}"#,
            r#"{"spec":{"containers":[{"resources":{"limits":{"cpu":1.5}}}]}}"#,
        ] {
            assert_eq!(agrees(Kind::Pod, raw), Ok(false), "{raw}");
        }
    }
}
