"""White, milk and dark chocolate: what goes in, which steps they take, how they are tempered.

The differences are the real ones, simplified:

* **dark** is cocoa mass (from roasted, ground beans), sugar and cocoa butter;
* **milk** adds milk powder (and, on this line, a little hazelnut paste), with less cocoa mass;
* **white** has *no cocoa mass at all*: cocoa butter, sugar and milk powder. It skips roasting
  and grinding and starts at refining.

Tempering curves differ by type because the milk fat in milk and white chocolate softens the
cocoa butter crystals: dark is melted at 50 C, cooled to 27.5 C and worked at 31.5 C; milk
45 / 26.5 / 29.5 C; white 45 / 25.5 / 28.5 C.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: every step of the line, in order (the seed keeps s5_tempering and s8_packaging)
STEPS = (
    "s1_roasting",
    "s2_grinding",
    "s3_refining",
    "s4_conching",
    "s5_tempering",
    "s6_molding",
    "s7_cooling",
    "s8_packaging",
)

#: raw materials bought from suppliers (the lots a recall starts from)
RAW_MATERIALS = ("cocoa_beans", "sugar", "milk_powder", "cocoa_butter", "hazelnut_paste")

#: what each step makes (the material of its output lot)
PRODUCT_OF_STEP = {
    "s1_roasting": "cocoa_nibs",
    "s2_grinding": "cocoa_mass",
    "s3_refining": "refined_mass",
    "s4_conching": "conched_mass",
    "s5_tempering": "tempered_chocolate",
    "s6_molding": "molded_chocolate",
    "s7_cooling": "cooled_chocolate",
    "s8_packaging": "finished_chocolate",
}


@dataclass(frozen=True)
class TemperingCurve:
    """Melt, cool (crystal seeding) and working temperatures, in C."""

    melt_c: float
    cool_c: float
    work_c: float

    def as_parameters(self) -> dict[str, float]:
        return {"melt_c": self.melt_c, "cool_c": self.cool_c, "work_c": self.work_c}


@dataclass(frozen=True)
class Recipe:
    """One product.

    :ivar name: white, milk or dark.
    :ivar fractions: share of each ingredient in the finished chocolate (sums to 1).
        ``cocoa_mass`` is made on the line from beans; the others are raw lots.
    :ivar additions: which raw materials each step adds (as shares of the finished mass).
    :ivar route: the steps this recipe goes through.
    """

    name: str
    fractions: dict[str, float]
    additions: dict[str, dict[str, float]]
    tempering: TemperingCurve
    roast_c: float
    conche_minutes: float
    conche_c: float
    route: tuple[str, ...] = field(default=STEPS)

    @property
    def uses_cocoa_mass(self) -> bool:
        return self.fractions.get("cocoa_mass", 0.0) > 0


RECIPES: dict[str, Recipe] = {
    "dark": Recipe(
        name="dark",
        fractions={"cocoa_mass": 0.60, "sugar": 0.32, "cocoa_butter": 0.08},
        additions={
            "s3_refining": {"sugar": 0.32, "cocoa_butter": 0.03},
            "s4_conching": {"cocoa_butter": 0.05},
        },
        tempering=TemperingCurve(50.0, 27.5, 31.5),
        roast_c=135.0,
        conche_minutes=360.0,
        conche_c=80.0,
    ),
    "milk": Recipe(
        name="milk",
        fractions={
            "cocoa_mass": 0.14,
            "sugar": 0.44,
            "milk_powder": 0.20,
            "cocoa_butter": 0.19,
            "hazelnut_paste": 0.03,
        },
        additions={
            "s3_refining": {
                "sugar": 0.44,
                "milk_powder": 0.20,
                "hazelnut_paste": 0.03,
                "cocoa_butter": 0.09,
            },
            "s4_conching": {"cocoa_butter": 0.10},
        },
        tempering=TemperingCurve(45.0, 26.5, 29.5),
        roast_c=125.0,
        conche_minutes=480.0,
        conche_c=60.0,
    ),
    "white": Recipe(
        name="white",
        fractions={"sugar": 0.45, "milk_powder": 0.25, "cocoa_butter": 0.30},
        additions={
            "s3_refining": {"sugar": 0.45, "milk_powder": 0.25, "cocoa_butter": 0.15},
            "s4_conching": {"cocoa_butter": 0.15},
        },
        tempering=TemperingCurve(45.0, 25.5, 28.5),
        roast_c=0.0,
        conche_minutes=240.0,
        conche_c=45.0,
        route=STEPS[2:],  # no cocoa mass: no roasting, no grinding
    ),
}
