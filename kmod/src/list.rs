//! The module list file of an initramfs (`[always]`, `[efi]`, `[hardware]`,
//! `[hardware-if-needed]`, `[on-demand]` sections).

use anyhow::bail;

/// The module list of an initramfs: `[always]` modules are loaded whatever
/// the hardware (file systems, loop); `[efi]` ones likewise, but only on a
/// machine the firmware booted through UEFI; `[hardware]` ones only when a present
/// device's modalias matches them (disk controllers, watchdogs);
/// `[hardware-if-needed]` ones likewise, but only when the image partition
/// is not on a disk the `[hardware]` drivers brought (see
/// [`crate::Loader`]); `[on-demand]` ones are carried but loaded only when
/// the init asks (the software watchdog, when no hardware one exists).
/// Lines before any section header count as `[always]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleList {
    pub always: Vec<String>,
    pub efi: Vec<String>,
    pub hardware: Vec<String>,
    pub hardware_if_needed: Vec<String>,
    pub on_demand: Vec<String>,
}

impl ModuleList {
    pub fn parse(text: &str) -> anyhow::Result<ModuleList> {
        let mut list = ModuleList::default();
        let mut section = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            match line {
                "" => {}
                "[always]" => section = 0,
                "[hardware]" => section = 1,
                "[on-demand]" => section = 2,
                "[hardware-if-needed]" => section = 3,
                "[efi]" => section = 4,
                l if l.starts_with('[') => bail!(
                    "line {}: unknown section {l} (expected [always], [efi], [hardware], \
                     [hardware-if-needed] or [on-demand])",
                    n + 1
                ),
                l => match section {
                    0 => list.always.push(l.to_string()),
                    1 => list.hardware.push(l.to_string()),
                    3 => list.hardware_if_needed.push(l.to_string()),
                    4 => list.efi.push(l.to_string()),
                    _ => list.on_demand.push(l.to_string()),
                },
            }
        }
        Ok(list)
    }

    pub fn all(&self) -> Vec<String> {
        self.always
            .iter()
            .chain(&self.efi)
            .chain(&self.hardware)
            .chain(&self.hardware_if_needed)
            .chain(&self.on_demand)
            .cloned()
            .collect()
    }

    pub fn render(&self) -> String {
        format!(
            "[always]\n{}\n[efi]\n{}\n[hardware]\n{}\n[hardware-if-needed]\n{}\n[on-demand]\n{}\n",
            self.always.join("\n"),
            self.efi.join("\n"),
            self.hardware.join("\n"),
            self.hardware_if_needed.join("\n"),
            self.on_demand.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_list_sections() {
        let l = ModuleList::parse(
            "ext4 # fs\nloop\n[hardware]\nvirtio_pci\n\n[on-demand]\nsoftdog\n[always]\noverlay\n\
             [hardware-if-needed]\nahci\n[efi]\nefivarfs\n",
        )
        .unwrap();
        assert_eq!(l.always, ["ext4", "loop", "overlay"]);
        assert_eq!(l.efi, ["efivarfs"]);
        assert_eq!(l.hardware, ["virtio_pci"]);
        assert_eq!(l.hardware_if_needed, ["ahci"]);
        assert_eq!(l.on_demand, ["softdog"]);
        assert_eq!(
            l.all(),
            [
                "ext4",
                "loop",
                "overlay",
                "efivarfs",
                "virtio_pci",
                "ahci",
                "softdog"
            ]
        );
        assert_eq!(ModuleList::parse(&l.render()).unwrap(), l);
        assert!(ModuleList::parse("[sometimes]\n").is_err());
    }
}
